"""The main job: SFT → simulated comparisons → reward model → PPO → evaluation and report.

    python experiments/rlhf_pipeline.py [--config.seed=1] [--config.policy_dir=D
        --config.preference_file=prefs.jsonl] [--config.ppo.kl.beta=0.05]

Every artifact lands in `--config.run_dir`: each stage's checkpoints and metrics, the data,
`eval.json` and `report.md` with its plots (layout: `rlhf_jax.stages.PipelineLayout`).
"""
import os
import sys

from rlhf_jax import stages

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "pipeline.py")


def main(argv):
    return stages.run_script("rlhf_jax.stages:run_pipeline", stages.PipelineConfig, argv, DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
