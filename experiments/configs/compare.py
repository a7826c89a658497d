"""The method comparison on the built-in task.

Every field, its default and its meaning: `rlhf_jax.studies.CompareConfig`.
Override any of them on the command line (`--config.seeds=0,1,2`), or copy this file and edit
it.
"""
from ml_collections import ConfigDict

from rlhf_jax import studies, train


def get_config() -> ConfigDict:
    return ConfigDict(train.config_to_dict(studies.CompareConfig()))
