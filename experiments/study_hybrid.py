"""Study: comparisons, ratings or both at equal annotation budgets (report.md with plots).

    python experiments/study_hybrid.py [--quick] [--config.run_dir=runs/study_hybrid]

Every key: `--help`.
"""
import os
import sys

from rlhf_jax import stages, studies

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "study_hybrid.py")


def main(argv):
    return stages.run_script("rlhf_jax.studies:hybrid_supervision", studies.HybridConfig,
                             argv, DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
