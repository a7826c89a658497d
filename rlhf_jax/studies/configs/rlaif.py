"""The RLAIF study's settings."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from rlhf_jax.stages.configs.pipeline import PipelineConfig


@dataclasses.dataclass(frozen=True)
class RLAIFConfig:
    """Human-label and AI-label runs of the pipeline side by side."""

    run_dir: str = "runs/rlaif"  # human/ and ai/ pipeline runs, report.md
    constitution: str = ""  # constitution file; empty: the packaged default (classifier judges)
    judge_model_dir: str = ""  # HF directory of the LM judge, for principles judged by "lm"
    quick: bool = False  # tiny budgets, for the tests
    pipeline: PipelineConfig = PipelineConfig()  # everything else of both runs

    def pipelines(self) -> dict:
        base = self.pipeline
        if self.quick:
            base = dataclasses.replace(
                base, comparisons=200, eval_samples=16, max_new_tokens=6,
                sft=dataclasses.replace(base.sft, steps=20),
                reward=dataclasses.replace(base.reward, steps=20, eval_every=10),
                ppo=dataclasses.replace(base.ppo, steps=4, batch_size=16))
        root = Path(self.run_dir)
        return {"human": dataclasses.replace(base, run_dir=str(root / "human"),
                                             feedback="human"),
                "ai": dataclasses.replace(base, run_dir=str(root / "ai"), feedback="ai",
                                          constitution=self.constitution,
                                          judge_model_dir=self.judge_model_dir)}
