"""A policy evaluated on a prompt file (toxicity, gold judge, diversity, length, KL).

Every field, its default and its meaning: `rlhf_jax.stages.EvalConfig`.
Override any of them on the command line (`--config.samples=512`), or copy this file and edit it.
"""
from ml_collections import ConfigDict

from rlhf_jax import stages, train


def get_config() -> ConfigDict:
    return ConfigDict(train.config_to_dict(stages.EvalConfig()))
