"""Online DPO: the policy's own samples, ranked at every step by a judge, trained on with DPO (or
cDPO, robust DPO, IPO, SimPO, ORPO); exact resume: rerun the same command to continue.

    python experiments/train_reward.py            # the judge (built-in task by default)
    python experiments/train_online_dpo.py [--config.judge=reward_model|vader|...]
        [--config.samples_per_prompt=2] [--config.loss.method=dpo|ipo|...]
        [--config.policy_dir=D --config.prompts.file=prompts.jsonl]
"""
import os
import sys

from rlhf_jax import stages

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "online_dpo.py")


def main(argv):
    return stages.run_script("rlhf_jax.stages:train_online_dpo", stages.OnlineDPOConfig, argv,
                             DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
