"""Serve the labelling web app: annotators compare, rank and rate responses; labels go to a
database and export as preference JSONL.

    python experiments/label_server.py --config.db=labels.sqlite --config.tasks=tasks.jsonl
    python experiments/label_server.py --config.policy_dir=runs/pipeline/sft/export
    python experiments/label_server.py --config.db=labels.sqlite --config.export_to=labels/

It prints the URL and each new annotator's login link. Every key: `--help`.
"""
import os
import sys

from rlhf_jax import labelling, stages

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "label_server.py")


def main(argv):
    return stages.run_script("rlhf_jax.labelling:serve", labelling.LabelServerConfig, argv, DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
