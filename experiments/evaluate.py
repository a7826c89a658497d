"""Evaluate a policy on a prompt file: profanity rate, gold judge, diversity, length (and KL to
a reference, a reward model's score) — e.g. toxicity on RealToxicityPrompts' prompts.

    python experiments/evaluate.py --config.policy_dir=D --config.prompts.file=prompts.jsonl
        [--config.prompts.field=prompt.text --config.reference_dir=R --config.reward_dir=RM]
"""
import os
import sys

from rlhf_jax import stages

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "evaluate.py")


def main(argv):
    return stages.run_script("rlhf_jax.stages:evaluate_prompts", stages.EvalConfig, argv, DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
