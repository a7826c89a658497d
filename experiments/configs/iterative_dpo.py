"""`rlhf_jax.studies.IterativeDPOConfig`: every field, its default and its meaning. Override any of
them on the command line (`--config.rounds=5`), or copy this file and edit it."""
from ml_collections import ConfigDict

from rlhf_jax import studies, train


def get_config() -> ConfigDict:
    return ConfigDict(train.config_to_dict(studies.IterativeDPOConfig()))
