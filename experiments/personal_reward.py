"""Study: rewards personalised to each simulated user — accuracy against their own labels,
recovered weights, active choice of comparisons, best-of-n per user and the safety floor
(report.md with plots).

    python experiments/personal_reward.py [--quick] [--config.run_dir=runs/study_personal_reward]

Every key: `--help`.
"""
import os
import sys

from rlhf_jax import stages, studies

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "personal_reward.py")


def main(argv):
    return stages.run_script("rlhf_jax.studies:personal_reward", studies.PersonalRewardConfig,
                             argv, DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
