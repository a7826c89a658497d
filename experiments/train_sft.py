"""Supervised fine-tuning with exact resume: rerun the same command to continue a stopped run.

    python experiments/train_sft.py [--config experiments/configs/sft.py] [--config.steps=500]
"""
import os
import sys

from rlhf_jax import stages

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "sft.py")


def main(argv):
    return stages.run_script("rlhf_jax.stages:train_sft", stages.SFTConfig, argv, DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
