"""Train a reward model on comparisons / rankings / ratings; evaluate, normalise and export it.

    python experiments/train_reward.py [--config.data.train_file=prefs.jsonl --config.model_dir=D]
"""
import os
import sys

from rlhf_jax import stages

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "reward.py")


def main(argv):
    return stages.run_script("rlhf_jax.stages:train_reward_model", stages.RewardConfig,
                             argv, DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
