"""Iterative DPO: rounds of sampling from the current policy, labels from a judge, simulated annotators or the labelling app, and DPO on them (rerun to go on, e.g. after people labelled the app's tasks).

    python experiments/rlhf_pipeline.py      # the SFT policy and reward model it starts from
    python experiments/iterative_dpo.py [--config.labels=judge|simulated|app] [--config.rounds=3]

Every key: `--help`.
"""
import os
import sys

from rlhf_jax import stages, studies

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "iterative_dpo.py")


def main(argv):
    return stages.run_script("rlhf_jax.studies:iterative_dpo", studies.IterativeDPOConfig,
                             argv, DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
