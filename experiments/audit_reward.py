"""Audit a trained reward model: model card, concepts (TCAV), activation atlas, reward-hacking
diagnostics and token-level explanations, as one self-contained HTML page (and Markdown).

    python experiments/audit_reward.py                       # the main job's runs/pipeline
    python experiments/audit_reward.py --config.run_dir=runs/mine
    python experiments/audit_reward.py --config.reward_dir=my_rm --config.preference_file=p.jsonl \
        --config.max_prompt_len=64 --config.max_response_len=128

Every key: `--help`.
"""
import os
import sys

from rlhf_jax import stages, studies

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "audit_reward.py")


def main(argv):
    return stages.run_script("rlhf_jax.studies:audit_reward", studies.AuditConfig, argv, DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
