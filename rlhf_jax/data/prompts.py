"""Prompt datasets for on-policy sampling: a local JSONL/Parquet `prompt` field → TFDS → grain.

Prompts are stored left-padded to `max_prompt_len` (truncated from the left, so the end of a
long prompt — the part the response continues — is kept), as in the preference datasets.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from rlhf_jax.data.preference import PAD, LocalBuilder, encode_prompt, fingerprint
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
                         append_eos: bool = False) -> PromptDataset:
    """Validate and tokenise the `prompt` (or `text`) field of a local file into a TFDS dataset.

    With `append_eos` (texts for language modelling) the tokenizer's EOS ends every row.
    Malformed records raise `DataFormatError` naming file, line and field (or are skipped and
    counted with `on_error="skip"`). Built datasets are keyed by the file's contents and these
    arguments, and reused.
    """
    path = check_data_file(path)
    if field not in ("prompt", "text"):
        raise ValueError(f"field={field!r}: expected 'prompt' or 'text'")
    suffix = [tokenizer.eos_token_id] if append_eos and tokenizer.eos_token_id is not None else []
    key = fingerprint(path, field, type(tokenizer).__name__, len(tokenizer), max_prompt_len,
                      on_error, validation_fraction, seed, suffix)
    data_dir = Path(out_dir) / f"{path.stem}-{key}"
    stats_file = data_dir / "stats.json"
    if not stats_file.is_file():
        records, rstats = read_records(path, field, on_error=on_error)
        counts = {"prompts_truncated": 0}
        rows = [{"prompt": encode_prompt(tokenizer, r["prompt"], max_prompt_len, counts, suffix),
                 "text": r["prompt"]} for r in records]
        empty = [i for i, r in enumerate(rows) if (r["prompt"] == PAD).all()]
        if empty:
            raise ValueError(f"{path}: {len(empty)} prompts tokenise to nothing (first: record "
                             f"{empty[0] + 1}, {records[empty[0]]['prompt']!r})")
        order = np.random.default_rng(seed).permutation(len(rows))
        n_val = int(round(validation_fraction * len(rows)))
        splits = {"train": [rows[i] for i in order[n_val:]]}
        if n_val:
            splits["validation"] = [rows[i] for i in order[:n_val]]
        LocalBuilder(examples=splits, features=_features(max_prompt_len), data_dir=str(data_dir),
                     file_format="array_record").prepare()
        stats = {**rstats.as_dict(), **counts, "kind": field, "file": str(path),
                 "prompts": len(rows), "limits": {"max_prompt_len": max_prompt_len},
                 "splits": {k: len(v) for k, v in splits.items()}}
        stats_file.write_text(json.dumps(stats, indent=2))
    stats = json.loads(stats_file.read_text())
    builder = LocalBuilder(examples={}, features=_features(max_prompt_len),
                           data_dir=str(data_dir), file_format="array_record")
    return PromptDataset(splits=dict(builder.as_data_source()), stats=stats,
                         max_prompt_len=max_prompt_len)


def prompt_arrays(prompt: np.ndarray, pad_id: int) -> dict:
    """Stored prompt ids (PAD = −1, any leading shape) → {"tokens", "mask"} for the model."""
    return {"tokens": np.where(prompt == PAD, pad_id, prompt).astype(np.int32),
            "mask": (prompt != PAD).astype(np.int32)}


def prompt_batches(source, batch_size: int, *, pad_id: int = 0, seed: int = 0,
                   num_epochs: Optional[int] = None, shuffle: bool = True):
    """A deterministic, checkpointable grain iterator of {"tokens", "mask"} [B, P] batches.

    Each process reads its own 1/process_count of the source; `num_epochs=None` repeats forever.
    """
    ds = grain.MapDataset.source(source)[jax.process_index()::jax.process_count()]
    if len(ds) < batch_size and num_epochs is not None:
        raise ValueError(f"{len(ds)} prompts per process is fewer than batch_size={batch_size}")
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs).map(lambda ex: prompt_arrays(ex["prompt"], pad_id))
    ds = ds.batch(batch_size, drop_remainder=True)
    return iter(ds.to_iter_dataset())
