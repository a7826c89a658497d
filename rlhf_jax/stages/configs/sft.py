"""The SFT stage's settings."""
from __future__ import annotations

import dataclasses

from rlhf_jax.checkpoint import CheckpointConfig
from rlhf_jax.data.buckets import ladder
from rlhf_jax.stages.configs.run import RunConfig
from rlhf_jax.train import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class SFTData:
    """What to learn: "progression" (synthetic token sequences of `SFTConfig.length`) or "text"
    (a JSONL/JSON/Parquet `file` of `text`, `messages` or `prompt` + `completion` records, see
    `data.sft`; empty file: the built-in corpus, with a tokenizer trained on it when there is
    no model_dir), rows of at most `max_len` tokens (0: 24 for the built-in corpus, 1024 for a
    file). Conversations learn their assistant turns only unless `train_on_prompt`.
    `packing`: "auto" packs a file's texts several to a row (segment ids keep them apart) and
    leaves the built-in corpus unpacked; "on" / "off". Unpacked batches are padded to the
    `buckets` rung of their longest row (`data.buckets.ladder`)."""

    # progression (synthetic tokens) or text (a JSONL/JSON/Parquet file of texts/conversations)
    source: str = "progression"
    file: str = ""  # the text file; empty: the built-in corpus
    max_len: int = 0  # tokens per row (longer rows are cut); 0: 24 built-in, 1024 for a file
    train_on_prompt: bool = False  # learn prompts and user turns too (default: responses only)
    packing: str = "auto"  # auto (a file: on; built-in corpus: off) | on | off
    buckets: str = "auto"  # padded lengths: auto (4 rungs halving from max_len) | off | list
    on_error: str = "raise"  # raise: stop at a malformed record; skip: skip and count it

    def __post_init__(self):
        if self.source not in ("progression", "text"):
            raise ValueError(f"data.source={self.source!r}: expected 'progression' or 'text'")
        if self.file and self.source != "text":
            raise ValueError(f"data.file={self.file!r} is read only with data.source='text' "
                             f"(data.source={self.source!r} learns synthetic sequences): set "
                             "--config.data.source=text")
        if self.packing not in ("auto", "on", "off"):
            raise ValueError(f"data.packing={self.packing!r}: expected auto, on or off")
        if self.max_len < 0:
            raise ValueError(f"data.max_len={self.max_len}: expected > 0 (or 0: the default)")
        ladder(max(self.max_len, 1), self.buckets)  # a malformed spec fails here

    @property
    def row_len(self) -> int:
        """The row length: `max_len`, or its default for the built-in corpus or a file."""
        return self.max_len or (1024 if self.file else 24)

    @property
    def packed(self) -> bool:
        """Whether texts are packed several to a row."""
        return self.packing == "on" or (self.packing == "auto" and bool(self.file))


@dataclasses.dataclass(frozen=True)
class SFTConfig(RunConfig):
    """Next-token cross-entropy on text, from a local HF directory (`model_dir`) or a randomly
    initialised `preset`, with exact resume from the run directory."""

    run_dir: str = "runs/sft"
    model_dir: str = ""  # local Hugging Face directory to start from; empty: the preset
    chat_template: str = ""  # a Jinja chat template file for the tokenizer (empty: its own)
    # built-in model size when model_dir is empty (tiny-llama, tiny-gpt2, ...)
    preset: str = "tiny-llama"
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 | float16
    data: SFTData = SFTData()
    steps: int = 200  # optimiser steps in total
    batch_size: int = 16  # sequences per step, over all processes
    length: int = 32  # sequence length of the "progression" source
    num_microbatches: int = 1  # gradient accumulation: micro-batches per step
    optim: OptimizerConfig = OptimizerConfig(learning_rate=3e-3, warmup_steps=20,
                                             total_steps=0, weight_decay=0.01)
    checkpoint: CheckpointConfig = CheckpointConfig(save_every=50, keep_last=2)
