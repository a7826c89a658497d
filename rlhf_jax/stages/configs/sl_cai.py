"""Critique-revision (SL-CAI)'s settings."""
from __future__ import annotations

import dataclasses

from rlhf_jax.stages.configs.sft import SFTConfig, SFTData


@dataclasses.dataclass(frozen=True)
class CritiqueRevisionConfig:
    """SL-CAI: the policy critiques and revises its own answers against the constitution, then
    is fine-tuned on the revisions through the SFT stage."""

    run_dir: str = "runs/sl_cai"  # revisions.jsonl, sft_texts.jsonl and the SFT run (export/)
    policy_dir: str = "runs/pipeline/sft/export"  # the policy (Hugging Face directory)
    constitution: str = ""  # constitution file; empty: the packaged default
    prompts_file: str = ""  # prompts JSONL ({"prompt": ...}); empty: the built-in prompts
    num_prompts: int = 64  # prompts answered, critiqued and revised
    rounds: int = 1  # critique-revision rounds per prompt
    max_len: int = 128  # context tokens kept when sampling (cut from the left)
    max_new_tokens: int = 24  # tokens per response, critique and revision
    seed: int = 0  # sampling seed (and the SFT stage's)
    # one revision a row (a few dozen short texts: packing would leave too few rows to batch)
    sft: SFTConfig = SFTConfig(steps=50, batch_size=16,
                               data=SFTData(source="text", max_len=40, packing="off"))

    def __post_init__(self):
        if self.num_prompts < 1 or self.rounds < 1:
            raise ValueError("num_prompts and rounds must be >= 1")
