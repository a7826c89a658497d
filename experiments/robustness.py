"""Study: poisoning attacks on preference labels (label flips, an inverter, a targeted flipper,
a trigger backdoor, entity promotion, sybils) at several rates, against reward models trained
with no defence and with each defence, and the reward exploit before and after patching
(report.md with plots, decisions.jsonl with every screening decision).

    python experiments/robustness.py [--quick] [--config.run_dir=runs/study_robustness]

Every key: `--help`.
"""
import os
import sys

from rlhf_jax import stages, studies

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "robustness.py")


def main(argv):
    return stages.run_script("rlhf_jax.studies:robustness", studies.RobustnessConfig, argv,
                             DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
