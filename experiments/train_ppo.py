"""PPO from reward-model feedback, with exact resume: rerun the same command to continue.

    python experiments/train_reward.py          # the reward model (built-in task by default)
    python experiments/train_ppo.py [--config.policy_dir=D --config.prompts.file=prompts.jsonl]
"""
import os
import sys

from rlhf_jax import stages

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "ppo.py")


def main(argv):
    return stages.run_script("rlhf_jax.stages:train_ppo", stages.PPOStageConfig, argv, DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
