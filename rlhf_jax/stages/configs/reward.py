"""The reward stage's settings."""
from __future__ import annotations

import dataclasses

from rlhf_jax import data, reward
from rlhf_jax.checkpoint import CheckpointConfig
from rlhf_jax.stages.configs.run import RunConfig
from rlhf_jax.train import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class RewardData:
    """Labels: a JSONL/JSON/Parquet `train_file` of `kind` pairwise | ranking | rating | binary,
    plain or conversational (`data.read_records`; empty: `builtin_pairs` comparisons by the
    built-in simulated annotators); ratings are declared on [rating_low, rating_high];
    `on_error` is "raise" or "skip" for malformed records. Lengths of 0 take the built-in
    task's (8 prompt and 10 response tokens) or, for a file, real data's (512 and 256);
    batches are padded to the `buckets` rungs of their longest prompt and response."""

    train_file: str = ""  # JSONL/JSON/Parquet labels; empty: the built-in simulated annotators
    # pairwise (TRL / HH-RLHF / UltraFeedback too) | ranking | rating | binary
    kind: str = "pairwise"
    rating_low: float = 0.0  # lowest rating the file's scale allows
    rating_high: float = 1.0  # highest rating the file's scale allows
    on_error: str = "raise"  # raise: stop at a malformed record; skip: skip and count it
    validation_fraction: float = 0.1  # share of the records held out for evaluation
    builtin_pairs: int = 2000  # comparisons the built-in task generates
    max_prompt_len: int = 0  # prompt tokens kept (cut from the left); 0: 8 built-in, 512 a file
    max_response_len: int = 0  # response tokens kept; 0: 10 built-in, 256 a file
    buckets: str = "auto"  # padded lengths: auto (4 rungs halving from the max) | off | list

    BUILTIN_LENGTHS = (8, 10)  # (prompt, response) tokens of the built-in task
    FILE_LENGTHS = (512, 256)  # and of a file of real data

    def __post_init__(self):
        for name in ("max_prompt_len", "max_response_len"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.{name}={getattr(self, name)}: expected > 0 (or 0: the "
                                 "default)")
        data.ladder(max(self.max_prompt_len, 1), self.buckets)  # a malformed spec fails here

    @property
    def prompt_len(self) -> int:
        """`max_prompt_len`, or its default for the built-in task or a file."""
        return self.max_prompt_len or (self.FILE_LENGTHS if self.train_file
                                       else self.BUILTIN_LENGTHS)[0]

    @property
    def response_len(self) -> int:
        """`max_response_len`, or its default for the built-in task or a file."""
        return self.max_response_len or (self.FILE_LENGTHS if self.train_file
                                         else self.BUILTIN_LENGTHS)[1]


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop after `patience` evaluations without improvement of `metric` (0: never)."""

    metric: str = "eval/loss"  # evaluation metric to watch
    patience: int = 0  # evaluations without improvement before stopping (0: never)
    mode: str = "min"  # min or max: which direction is better


@dataclasses.dataclass(frozen=True)
class RewardConfig(RunConfig):
    """A reward model (scalar head, or an ensemble of `num_reward_outputs` heads) on a backbone
    from `model_dir` (local HF directory) or a randomly initialised `preset`."""

    run_dir: str = "runs/reward"
    model_dir: str = ""  # local Hugging Face directory of the backbone; empty: the preset
    chat_template: str = ""  # a Jinja chat template file for the tokenizer (empty: its own)
    preset: str = "tiny-llama"  # built-in model size when model_dir is empty
    num_reward_outputs: int = 1  # reward heads: > 1 is an ensemble on one backbone
    # named objectives, one head each (helpful,harmless,...); records' `objective` field and
    # ratings named alike train their head; empty: one reward (or an ensemble)
    objectives: str = ""
    dropout: float = 0.0  # embedding / attention / residual dropout while training
    data: RewardData = RewardData()
    loss: reward.RewardLossConfig = reward.RewardLossConfig(centering_coef=0.01)
    steps: int = 300  # optimiser steps in total
    batch_size: int = 32  # examples per step, over all processes
    optim: OptimizerConfig = OptimizerConfig(learning_rate=1e-3, warmup_steps=20,
                                             total_steps=0, weight_decay=0.01)
    eval_every: int = 50  # steps between held-out evaluations (0: never)
    early_stopping: EarlyStopping = EarlyStopping()
    normalise_samples: int = 512  # responses whose rewards the export normalises to mean 0, std 1
    checkpoint: CheckpointConfig = CheckpointConfig(save_every=50, keep_last=2, keep_best=1,
                                                    best_metric="eval/accuracy", best_mode="max")

    def __post_init__(self):
        super().__post_init__()
        if self.num_reward_outputs < 1:
            raise ValueError(f"num_reward_outputs={self.num_reward_outputs}: expected >= 1")
        names = reward.parse_objectives(self.objectives)
        if names and self.num_reward_outputs not in (1, len(names)):
            raise ValueError(f"objectives={self.objectives!r} gives {len(names)} heads, but "
                             f"num_reward_outputs={self.num_reward_outputs}: leave it at 1")
        if names and self.loss.custom:
            raise ValueError(f"objectives={self.objectives!r} and loss.custom="
                             f"{self.loss.custom!r}: a custom loss trains its own heads; give "
                             "one or the other")
        fraction = self.data.validation_fraction
        if not 0 <= fraction < 1:
            raise ValueError(f"data.validation_fraction={fraction}: expected 0 <= x < 1")
        ck = self.checkpoint
        needs_eval = [f"{k}={v}" for k, v in (
            ("eval_every", self.eval_every), ("early_stopping.patience",
                                              self.early_stopping.patience),
            ("checkpoint.keep_best", ck.keep_best if ck.best_metric.startswith("eval/") else 0))
            if v]
        if fraction == 0 and needs_eval:
            raise ValueError(f"data.validation_fraction=0 holds nothing out, but "
                             f"{', '.join(needs_eval)} evaluate on the held-out split: set a "
                             "fraction > 0 or turn those off (0)")
