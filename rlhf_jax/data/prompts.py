"""Prompt datasets for on-policy sampling: a local JSONL/Parquet `prompt` field → TFDS → grain.

Prompts are stored left-padded to `max_prompt_len` (cut from the left, so the end of a long
prompt — the part the response continues — is kept; a conversation is rendered through the
chat template with its generation prompt and cut by turns: `data.chat`). Batches are padded to
the rung of `data.buckets` that holds their longest prompt.
"""
from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path
from typing import Optional

import jax
import numpy as np
import tensorflow_datasets as tfds

from rlhf_jax.data.buckets import BucketedBatches, LengthSource, fixed_batches, ladder
from rlhf_jax.data.chat import tokenizer_key
from rlhf_jax.data.conversation import prompt_record_text
from rlhf_jax.data.preference import (PAD, LocalBuilder, encode_prompt, fingerprint,
                                      load_lengths, tokenize_records, write_splits)
from rlhf_jax.data.records import check_data_file, read_records


@dataclasses.dataclass
class PromptDataset:
    """A built prompt dataset: TFDS splits as random-access sources, and what building saw."""

    splits: dict
    stats: dict
    max_prompt_len: int


def _features(prompt_len: int):
    return tfds.features.FeaturesDict({
        "prompt": tfds.features.Tensor(shape=(prompt_len,), dtype=np.int32),
        "text": tfds.features.Text()})


def build_prompt_dataset(path, tokenizer, out_dir, *, max_prompt_len: int,
                         on_error: str = "raise", validation_fraction: float = 0.0,
                         seed: int = 0, field: str = "prompt",
                         buckets: str = "auto") -> PromptDataset:
    """Validate and tokenise the prompts of a local file into a TFDS dataset: the `prompt`
    field (text, messages, or an HH-RLHF transcript), or a nested one such as
    RealToxicityPrompts' `field="prompt.text"`.

    Malformed records raise `DataFormatError` naming file, line and field (or are skipped and
    counted with `on_error="skip"`). Built datasets are keyed by the file's contents, the
    tokenizer and these arguments, and reused. Each split is a `LengthSource` (rungs from
    `buckets`); each row keeps its prompt's text (`prompt_from_text` reads it back).
    """
    path = check_data_file(path)
    key = fingerprint(path, "v3", field, tokenizer_key(tokenizer), max_prompt_len, on_error,
                      validation_fraction, seed)
    data_dir = Path(out_dir) / f"{path.stem}-{key}"
    stats_file = data_dir / "stats.json"
    if not stats_file.is_file():
        records, rstats = read_records(path, "prompt", on_error=on_error, field=field)
        counts = {"prompts_truncated": 0}
        records, encoded = tokenize_records(
            path, records, rstats,
            lambda r: encode_prompt(tokenizer, r["prompt"], max_prompt_len, counts), on_error)
        rows = [{"prompt": ids, "text": prompt_record_text(r["prompt"])}
                for r, ids in zip(records, encoded)]
        empty = [i for i, r in enumerate(rows) if (r["prompt"] == PAD).all()]
        if empty:
            raise ValueError(f"{path}: {len(empty)} prompts tokenise to nothing (first: record "
                             f"{empty[0] + 1}, {records[empty[0]]['prompt']!r})")
        splits = write_splits(rows, data_dir, _features(max_prompt_len), seed=seed,
                              validation_fraction=validation_fraction,
                              lengths=lambda ex: (ex["prompt"] != PAD).sum())
        stats = {**rstats.as_dict(), **counts, "kind": "prompt", "file": str(path),
                 "prompts": len(rows), "limits": {"max_prompt_len": max_prompt_len},
                 "conversations": sum(isinstance(r["prompt"], list) for r in records),
                 "splits": splits}
        stats_file.write_text(json.dumps(stats, indent=2))
    stats = json.loads(stats_file.read_text())
    builder = LocalBuilder(examples={}, features=_features(max_prompt_len),
                           data_dir=str(data_dir), file_format="array_record")
    rungs = (ladder(max_prompt_len, buckets),)
    splits = {name: LengthSource(src, load_lengths(data_dir, name), rungs)
              for name, src in builder.as_data_source().items()}
    return PromptDataset(splits=splits, stats=stats, max_prompt_len=max_prompt_len)


def prompt_arrays(prompt: np.ndarray, pad_id: int) -> dict:
    """Stored prompt ids (PAD = −1, any leading shape) → {"tokens", "mask"} for the model."""
    return {"tokens": np.where(prompt == PAD, pad_id, prompt).astype(np.int32),
            "mask": (prompt != PAD).astype(np.int32)}


def _prompt_batch(source, indices, shape, valid, *, pad_id: int, texts: bool) -> dict:
    """Rows `indices` of `source` cut to `shape` = (P,) (padding rows, not `valid`, repeat a
    real prompt: prompt batches are sampled from and carry no loss of their own)."""
    p = shape[0]
    rows = [source[int(i)] for i in indices]
    out = prompt_arrays(np.stack([r["prompt"][-p:] for r in rows]), pad_id)
    if texts:
        out["texts"] = [_text(r["text"]) for r in rows]
    return out


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def prompt_batches(source, batch_size: int, *, pad_id: int = 0, seed: int = 0,
                   num_epochs: Optional[int] = None, shuffle: bool = True, texts: bool = False):
    """A deterministic, checkpointable iterator of {"tokens", "mask"} [B, P] batches (this
    process's share), with "texts" (each row's prompt as `prompt_from_text` reads it) when
    asked.

    A `LengthSource` with several rungs gives batches of prompts of similar length, each padded
    to its own rung (`BucketedBatches`); otherwise every batch has the stored length.
    `num_epochs=None` repeats forever.
    """
    if isinstance(source, LengthSource) and source.buckets_for(batch_size, num_epochs):
        if len(source) < batch_size * jax.process_count() and num_epochs is not None:
            raise ValueError(f"{len(source)} prompts is fewer than batch_size={batch_size}")
        return BucketedBatches(source, batch_size, partial(_prompt_batch, source, pad_id=pad_id,
                                                           texts=texts),
                               seed=seed, shuffle=shuffle, num_epochs=num_epochs)
    def arrays(ex):
        out = prompt_arrays(ex["prompt"], pad_id)
        if texts:
            out["texts"] = _text(ex["text"])
        return out

    return fixed_batches(source, batch_size, arrays, seed=seed, shuffle=shuffle,
                         num_epochs=num_epochs, what="prompts",
                         batch_fn=_stack_with_texts if texts else None)


def _stack_with_texts(rows) -> dict:
    out = {k: np.stack([r[k] for r in rows]) for k in ("tokens", "mask")}
    out["texts"] = [r["texts"] for r in rows]
    return out
