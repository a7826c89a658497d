"""Study: labels per item against annotator noise, and annotator models on a mixed crowd (report.md with plots).

    python experiments/study_annotators.py [--quick] [--config.run_dir=runs/study_annotators]

Every key: `--help`.
"""
import os
import sys

from rlhf_jax import stages, studies

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "study_annotators.py")


def main(argv):
    return stages.run_script("rlhf_jax.studies:annotator_variance", studies.AnnotatorVarianceConfig,
                             argv, DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
