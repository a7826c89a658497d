"""Online DPO: the policy's samples ranked at every step by a judge (the reward model at
`reward_dir` by default, or a text scorer such as `vader`), with a pairwise offline loss.

Every field, its default and its meaning: `rlhf_jax.stages.OnlineDPOConfig`.
Override any of them on the command line (`--config.judge=vader`), or copy this file and edit it.
"""
from ml_collections import ConfigDict

from rlhf_jax import stages, train


def get_config() -> ConfigDict:
    return ConfigDict(train.config_to_dict(stages.OnlineDPOConfig()))
