"""RLAIF: the main job with a constitution judge's AI labels beside the simulated humans' labels,
and a report comparing the two (label agreement, gold, KL, profanity rate).

    python experiments/rlaif.py [--config.constitution=my.toml] [--quick]

Every key: `--help`.
"""
import os
import sys

from rlhf_jax import stages, studies

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "rlaif.py")


def main(argv):
    return stages.run_script("rlhf_jax.studies:run_rlaif", studies.RLAIFConfig, argv, DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
