"""SL-CAI: the policy critiques and revises its own answers against the constitution
(response -> critique -> revision, n rounds, all stored), then is fine-tuned on the revisions.

    python experiments/critique_revision.py --config.policy_dir=runs/pipeline/sft/export

Every key: `--help`."""
import os
import sys

from rlhf_jax import stages

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "critique_revision.py")


def main(argv):
    return stages.run_script("rlhf_jax.stages:train_sl_cai", stages.CritiqueRevisionConfig,
                             argv, DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
