"""SFT datasets: texts and conversations as token rows with a loss mask, padded by length
buckets or packed several to a row.

A record (`read_records(kind="text")`) is a plain `text` (learnt whole), `prompt` +
`completion` (the completion is learnt) or `messages` (the assistant turns are learnt, through
the chat template: `data.chat.ChatEncoder.sft_ids`); `train_on_prompt` learns every token.
Rows longer than `max_len` are cut at the end. Rows are stored left-padded with PAD beside
their loss mask.

Batches are {"tokens", "mask", "loss_mask"} [B, L]: the next-token targets are
`losses.next_token_targets(mask) * loss_mask`. Packed batches (`packing=True`) put several
examples in each row of `max_len` tokens and add "segment_ids" (1, 2, … per example, 0 on
padding) and "positions" (restarting at 0 in each example): the model attends only within a
segment (`models.DecoderModel(..., segment_ids=)`), and the first token of each segment is no
target, so the loss and its gradients equal those of the examples unpacked.
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

from rlhf_jax.data.buckets import (BucketedBatches, LengthSource, fixed_batches, ladder,
                                   pack_rows)
from rlhf_jax.data.chat import ChatTemplateError, encoder_for, tokenizer_key
from rlhf_jax.data.preference import (PAD, LocalBuilder, fingerprint, load_lengths,
                                      tokenize_records, write_splits)
from rlhf_jax.data.records import check_data_file, read_records


@dataclasses.dataclass
class SFTDataset:
    """A built SFT dataset: `LengthSource` splits, what building saw, and the row length."""

    splits: dict
    stats: dict
    max_len: int


def _features(max_len: int):
    t = tfds.features.Tensor
    return tfds.features.FeaturesDict({"tokens": t(shape=(max_len,), dtype=np.int32),
                                       "loss": t(shape=(max_len,), dtype=np.int32)})


def build_sft_dataset(path, tokenizer, out_dir, *, max_len: int, on_error: str = "raise",
                      train_on_prompt: bool = False, validation_fraction: float = 0.0,
                      seed: int = 0, buckets: str = "auto") -> SFTDataset:
    """Validate and tokenise the texts of a local file (`text`, `messages` or `prompt` +
    `completion`) into a TFDS dataset of rows of at most `max_len` tokens. Keyed by the file's
    contents, the tokenizer and these arguments, and reused. A row whose every learnt token
    lies beyond `max_len` is refused naming its line (or skipped and counted with
    `on_error="skip"`)."""
    path = check_data_file(path)
    key = fingerprint(path, "sft-v2", tokenizer_key(tokenizer), max_len, on_error,
                      train_on_prompt, validation_fraction, seed)
    data_dir = Path(out_dir) / f"{path.stem}-{key}"
    stats_file = data_dir / "stats.json"
    if not stats_file.is_file():
        records, rstats = read_records(path, "text", on_error=on_error)
        enc = encoder_for(tokenizer)
        counts = {"prompts_truncated": 0, "trained_tokens": 0}

        def encode(record):
            ids, loss = enc.sft_ids(record, train_on_prompt)
            if any(loss[1:]) and not any(loss[1:max_len]):
                raise ChatTemplateError(
                    f"every learnt token lies beyond data.max_len={max_len} (the row has "
                    f"{len(ids)} tokens; the first learnt one is at {loss.index(1, 1)}): "
                    "raise data.max_len or shorten the prompt")
            return ids, loss

        records, encoded = tokenize_records(path, records, rstats, encode, on_error)
        rows = []
        for ids, loss in encoded:
            if len(ids) > max_len:
                counts["prompts_truncated"] += 1
                ids, loss = ids[:max_len], loss[:max_len]
            counts["trained_tokens"] += int(sum(loss[1:]))
            tokens = np.full(max_len, PAD, np.int32)
            mask = np.zeros(max_len, np.int32)
            if ids:
                tokens[-len(ids):], mask[-len(ids):] = ids, loss
            rows.append({"tokens": tokens, "loss": mask})
        if not any(r["loss"][1:].any() for r in rows):
            raise ValueError(f"{path}: no row keeps a learnt token within max_len={max_len}; "
                             "raise the length")
        splits = write_splits(rows, data_dir, _features(max_len), seed=seed,
                              validation_fraction=validation_fraction,
                              lengths=lambda ex: (ex["tokens"] != PAD).sum())
        stats = {**rstats.as_dict(), **counts, "kind": "text", "file": str(path),
                 "prompts": len(rows), "limits": {"max_prompt_len": max_len},
                 "conversations": sum("messages" in r or isinstance(r.get("prompt"), list)
                                      for r in records),
                 "splits": splits}
        stats_file.write_text(json.dumps(stats, indent=2))
    stats = json.loads(stats_file.read_text())
    builder = LocalBuilder(examples={}, features=_features(max_len), data_dir=str(data_dir),
                           file_format="array_record")
    rungs = (ladder(max_len, buckets),)
    splits = {name: LengthSource(src, load_lengths(data_dir, name), rungs)
              for name, src in builder.as_data_source().items()}
    return SFTDataset(splits=splits, stats=stats, max_len=max_len)


def sft_arrays(tokens: np.ndarray, loss: np.ndarray, pad_id: int) -> dict:
    """Stored rows (PAD = −1, left-padded) → {"tokens", "mask", "loss_mask"}."""
    return {"tokens": np.where(tokens == PAD, pad_id, tokens).astype(np.int32),
            "mask": (tokens != PAD).astype(np.int32), "loss_mask": loss.astype(np.int32)}


def _bucketed(source, indices, shape, valid, *, pad_id: int) -> dict:
    """Rows `indices` cut to `shape` = (L,); rows not `valid` (padding) learn nothing."""
    n = shape[0]
    rows = [source[int(i)] for i in indices]
    out = sft_arrays(np.stack([r["tokens"][-n:] for r in rows]),
                     np.stack([r["loss"][-n:] for r in rows]), pad_id)
    out["loss_mask"] = out["loss_mask"] * np.asarray(valid)[:, None]
    return out


def packed_row(examples: list, row_len: int, pad_id: int) -> dict:
    """Stored examples packed into one row of `row_len`: tokens, mask, loss_mask (no target
    at a segment's first token), segment_ids (1, 2, …; 0 on padding) and positions."""
    tokens = np.full(row_len, pad_id, np.int32)
    out = {k: np.zeros(row_len, np.int32) for k in ("mask", "loss_mask", "segment_ids",
                                                    "positions")}
    at = 0
    for seg, ex in enumerate(examples, start=1):
        keep = ex["tokens"] != PAD
        ids, loss = ex["tokens"][keep], ex["loss"][keep]
        n = len(ids)
        tokens[at:at + n] = ids
        out["mask"][at:at + n] = 1
        out["loss_mask"][at + 1:at + n] = loss[1:]
        out["segment_ids"][at:at + n] = seg
        out["positions"][at:at + n] = np.arange(n)
        at += n
    return {"tokens": tokens, **out}


class PackedBatches:
    """Batches of `batch_size` rows (this process's share), each row `row_len` tokens packed
    first-fit from the examples in a shuffled order (`buckets.pack_rows`); forever, or for
    `num_epochs` (a last partial batch padded with empty rows). State {"epoch", "batch"}:
    exact resume."""

    def __init__(self, source: LengthSource, batch_size: int, *, row_len: int, pad_id: int,
                 seed: int = 0, shuffle: bool = True, num_epochs: Optional[int] = None):
        self.src, self.local_batch, self.row_len, self.pad_id = source, batch_size, row_len, pad_id
        self.seed, self.shuffle, self.num_epochs = seed, shuffle, num_epochs
        self.global_batch = batch_size * jax.process_count()
        self.epoch, self.batch, self._plan = 0, 0, None

    def plan(self, epoch: int) -> list:
        """Epoch `epoch`'s batches: lists of rows, each a list of example indices."""
        n = len(self.src)
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        rows = pack_rows(self.src.lengths[:, 0], order, self.row_len)
        batches = [rows[i:i + self.global_batch] for i in range(0, len(rows),
                                                                 self.global_batch)]
        if batches and len(batches[-1]) < self.global_batch and self.num_epochs is None:
            batches.pop()
        if not batches:
            raise ValueError(f"{n} examples pack into {len(rows)} rows of {self.row_len} "
                             f"tokens, fewer than one batch of {self.global_batch} rows: lower "
                             "the batch size or the row length (data.max_len), or turn packing "
                             "off (data.packing=off)")
        return batches

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        while True:
            if self.num_epochs is not None and self.epoch >= self.num_epochs:
                raise StopIteration
            if self._plan is None or self._plan[0] != self.epoch:
                self._plan = (self.epoch, self.plan(self.epoch))
            if self.batch < len(self._plan[1]):
                break
            self.epoch, self.batch = self.epoch + 1, 0
        rows = list(self._plan[1][self.batch]) + [[]] * self.global_batch
        self.batch += 1
        p = jax.process_index()
        mine = rows[p * self.local_batch:(p + 1) * self.local_batch]
        packed = [packed_row([self.src[i] for i in row], self.row_len, self.pad_id)
                  for row in mine]
        return {k: np.stack([r[k] for r in packed]) for k in packed[0]}

    def get_state(self) -> dict:
        """The position: epoch and batch within it."""
        return {"epoch": self.epoch, "batch": self.batch}

    def set_state(self, state: dict) -> None:
        """Resume at a position from `get_state`."""
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def examples_per_row(self) -> float:
        """The first epoch's mean examples per packed row."""
        rows = [r for b in self.plan(0) for r in b]
        return sum(map(len, rows)) / max(len(rows), 1)


def sft_batches(source, batch_size: int, *, pad_id: int = 0, seed: int = 0,
                packing: bool = False, num_epochs: Optional[int] = None, shuffle: bool = True):
    """A deterministic, checkpointable iterator of SFT batches (this process's share):
    packed rows of the dataset's length (`PackedBatches`), batches padded to their length
    rung (`BucketedBatches`, when the source has several rungs), or every batch at the stored
    length (grain)."""
    if packing:
        return PackedBatches(source, batch_size, row_len=source.rungs[0][-1], pad_id=pad_id,
                             seed=seed, shuffle=shuffle, num_epochs=num_epochs)
    if isinstance(source, LengthSource) and source.buckets_for(batch_size, num_epochs):
        return BucketedBatches(source, batch_size, partial(_bucketed, source, pad_id=pad_id),
                               seed=seed, shuffle=shuffle, num_epochs=num_epochs)
    return fixed_batches(source, batch_size,
                         lambda ex: sft_arrays(ex["tokens"], ex["loss"], pad_id), seed=seed,
                         shuffle=shuffle, num_epochs=num_epochs, what="texts")
