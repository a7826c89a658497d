"""Train a policy from logged feedback alone: DPO and relatives, KTO, AWR, filtered BC.

    python experiments/train_offline.py [--config.loss.method=dpo|cdpo|rdpo|ipo|simpo|orpo|kto|
        awr|filtered_bc] [--config.policy_dir=D --config.data.train_file=prefs.jsonl
        --config.data.kind=pairwise|ranking|binary|rating] [--config.reference=cached|step]
"""
import os
import sys

from rlhf_jax import stages

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "offline.py")


def main(argv):
    return stages.run_script("rlhf_jax.stages:train_offline", stages.OfflineConfig, argv, DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
