"""Study: held-out accuracy against labels for each acquisition function (report.md with plots).

    python experiments/study_label_efficiency.py [--quick] [--config.run_dir=runs/study_label_efficiency]

Every key: `--help`.
"""
import os
import sys

from rlhf_jax import stages, studies

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "study_label_efficiency.py")


def main(argv):
    return stages.run_script("rlhf_jax.studies:label_efficiency", studies.LabelEfficiencyConfig,
                             argv, DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
