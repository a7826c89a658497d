"""The offline stage's settings."""
from __future__ import annotations

import dataclasses

from rlhf_jax import offline
from rlhf_jax.checkpoint import CheckpointConfig
from rlhf_jax.stages.configs.reward import RewardData
from rlhf_jax.stages.configs.run import RunConfig
from rlhf_jax.train import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class OfflineData(RewardData):
    """Logged feedback: a JSONL/Parquet `train_file` of `kind` pairwise | ranking | binary |
    rating (which kinds a method reads: `offline.METHOD_KINDS`); empty: `builtin_pairs`
    comparisons of the built-in task. Ratings are declared on [rating_low, rating_high]."""

    # pairwise (TRL / HH-RLHF / UltraFeedback too) | ranking | binary | rating
    kind: str = "pairwise"

    BUILTIN_LENGTHS = (8, 12)  # the built-in task's responses, EOS included


@dataclasses.dataclass(frozen=True)
class OfflineConfig(RunConfig):
    """A policy trained from logged feedback alone, starting from `policy_dir` (a local HF
    directory, which is also the frozen reference) or a randomly initialised `preset`.

    `reference`: "cached" scores the data with the reference once (one jitted pass before
    training, stored with the run) and drops the reference weights; "step" keeps them and
    scores each batch in the step. Both give the same loss. `reference_dir` names another
    policy as the reference (same architecture and vocabulary; e.g. iterative DPO's later
    rounds, which start from the last round's policy but keep the initial one as the KL
    anchor); with LoRA it is then read in full, adapters off.
    """

    run_dir: str = "runs/offline"
    policy_dir: str = ""  # local Hugging Face directory of the policy; empty: the preset
    chat_template: str = ""  # a Jinja chat template file for the tokenizer (empty: its own)
    preset: str = "tiny-llama"  # built-in model size when policy_dir is empty
    reference_dir: str = ""  # local HF directory of the reference; empty: policy_dir's start
    data: OfflineData = OfflineData()
    loss: offline.OfflineLossConfig = offline.OfflineLossConfig()
    reference: str = "cached"  # cached (one pass before training) | step (every step)
    steps: int = 200  # optimiser steps in total
    batch_size: int = 32  # rows per step, over all processes
    num_microbatches: int = 1  # gradient accumulation: micro-batches per step
    optim: OptimizerConfig = OptimizerConfig(learning_rate=3e-4, warmup_steps=10,
                                             total_steps=0, weight_decay=0.0)
    eval_every: int = 50  # steps between held-out evaluations (0: never)
    checkpoint: CheckpointConfig = CheckpointConfig(save_every=50, keep_last=2)

    def __post_init__(self):
        super().__post_init__()
        if self.reference not in ("cached", "step"):
            raise ValueError(f"reference={self.reference!r}: expected 'cached' or 'step'")
        dc = self.data
        if dc.kind not in ("pairwise", "ranking", "binary", "rating"):
            raise ValueError(f"data.kind={dc.kind!r}: expected pairwise, ranking, binary or "
                             "rating")
        if not self.loss.custom:  # a custom loss reads whatever kind it is given
            offline.check_method_kind(self.loss.method, dc.kind)
        if self.num_microbatches > 1 and self.loss.method in ("kto", "awr", "filtered_bc"):
            raise ValueError(f"num_microbatches={self.num_microbatches}: {self.loss.method}'s "
                             "reference point / baseline / kept share is a statistic of the "
                             "whole batch, which micro-batches would change; use 1")
        if not dc.train_file and dc.kind != "pairwise":
            raise ValueError(f"data.kind={dc.kind!r} needs data.train_file: the built-in data "
                             "are pairwise comparisons")
        if not 0 <= dc.validation_fraction < 1:
            raise ValueError(f"data.validation_fraction={dc.validation_fraction}: expected "
                             "0 <= x < 1")
        if dc.validation_fraction == 0 and self.eval_every:
            raise ValueError(f"data.validation_fraction=0 holds nothing out, but eval_every="
                             f"{self.eval_every} evaluates on the held-out split: set a "
                             "fraction > 0 or eval_every=0")
