"""The labelling server (`rlhf_jax.labelling.LabelServerConfig`: every field, its default and its
meaning). Override any of them on the command line (`--config.port=8080`)."""
from ml_collections import ConfigDict

from rlhf_jax import labelling, train


def get_config() -> ConfigDict:
    return ConfigDict(train.config_to_dict(labelling.LabelServerConfig()))
