"""Active learning for the reward model: rounds of pool sampling, ensemble scoring, acquisition, labelling and warm-started training, checkpointed (rerun to resume).

    python experiments/active_learning.py [--config.acquisition=bald] [--config.labels=simulated|file|app]

Every key: `--help`.
"""
import os
import sys

from rlhf_jax import stages, studies

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "active_learning.py")


def main(argv):
    return stages.run_script("rlhf_jax.studies:active_learning", studies.ActiveConfig,
                             argv, DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
