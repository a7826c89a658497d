"""Offline preference optimisation / offline RL from logged feedback (built-in comparisons by
default).

Every field, its default and its meaning: `rlhf_jax.stages.OfflineConfig`.
Override any of them on the command line (`--config.loss.method=kto`), or copy this file and
edit it.
"""
from ml_collections import ConfigDict

from rlhf_jax import stages, train


def get_config() -> ConfigDict:
    return ConfigDict(train.config_to_dict(stages.OfflineConfig()))
