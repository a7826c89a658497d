"""Preference datasets: tokenise validated records into TFDS array_record files, load with grain.

Layout (DESIGN.md): each response is stored after its prompt; the prompt is left-padded to
`max_prompt_len` (and truncated from the left), the response right-padded to `max_response_len`
(truncated from the right, EOS appended first when the tokenizer has one).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from flax import struct

from rlhf_jax.data.records import check_data_file, normalise_rating, read_records, record_key

PAD = -1  # stored padding; replaced by pad_token_id when batching


@struct.dataclass
class PreferenceBatch:
    """A batch of prompts with K responses each, mixing comparisons, rankings and ratings.

    tokens/mask [B, K, P+R]: prompt left-padded, response right-padded. `ranks` [B, K] (0 best);
    `valid` [B, K] marks real responses; `is_comparison` [B] rows with ≥ 2 ranked responses;
    `rating` [B] in [−1, 1] where `has_rating`; `annotator` [B] index into the dataset's
    annotator list (−1: none); `weight` [B] is 0 for padding rows; `index` [B] the row's position
    in its source (e.g. to look up values cached per example).
    """

    tokens: np.ndarray
    mask: np.ndarray
    ranks: np.ndarray
    valid: np.ndarray
    is_comparison: np.ndarray
    rating: np.ndarray
    has_rating: np.ndarray
    annotator: np.ndarray
    weight: np.ndarray
    index: np.ndarray = None
    confidence: np.ndarray = None  # [B] P(the label is right): 1 for a hard label (None: all 1)
    prompt_len: int = struct.field(pytree_node=False, default=0)


@dataclasses.dataclass
class PreferenceDataset:
    """A built dataset: its TFDS splits as random-access sources, and what building saw."""

    splits: dict
    stats: dict
    annotators: list
    max_prompt_len: int
    max_response_len: int
    num_responses: int
    fingerprint: str = ""  # the file's contents and every build setting (seed included)


class LocalBuilder(tfds.core.GeneratorBasedBuilder):
    """TFDS builder over already-validated, tokenised examples (array_record, no TensorFlow).

    `examples` maps split name → rows; `features` is the rows' `FeaturesDict`.
    """

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, examples: dict, features, **kwargs):
        self._examples, self._features = examples, features
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=self._features)

    def _split_generators(self, dl_manager):
        return {name: self._generate_examples(rows) for name, rows in self._examples.items()}

    def _generate_examples(self, rows):
        for i, row in enumerate(rows):
            yield i, row

    def prepare(self) -> None:
        """Write the array_record files without TFDS's download banner and progress bars (the
        data is local; the stages report what was prepared themselves)."""
        tfds.disable_progress_bar()
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.download_and_prepare()
        finally:
            absl_logger.setLevel(level)


def _preference_features(prompt_len: int, response_len: int):
    t = tfds.features.Tensor
    return tfds.features.FeaturesDict({
        "prompt": t(shape=(prompt_len,), dtype=np.int32),
        "responses": t(shape=(None, response_len), dtype=np.int32),
        "ranks": t(shape=(None,), dtype=np.int32),
        "rating": np.float32, "has_rating": np.int32, "annotator": np.int32,
        "confidence": np.float32,
        "rationale": tfds.features.Text()})


def encode_prompt(tokenizer, text: str, max_prompt_len: int, counts: dict,
                  suffix: Sequence[int] = ()) -> np.ndarray:
    """Prompt ids [P] (+ `suffix`, e.g. EOS), left-padded with PAD and truncated from the left."""
    ids = _encode(tokenizer, text) + list(suffix)
    if len(ids) > max_prompt_len:
        counts["prompts_truncated"] += 1
        ids = ids[-max_prompt_len:]
    prompt = np.full(max_prompt_len, PAD, np.int32)
    if ids:
        prompt[-len(ids):] = ids
    return prompt


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_record(rec: dict, tokenizer, max_prompt_len: int, max_response_len: int,
                    eos_id: Optional[int], counts: dict) -> tuple[np.ndarray, np.ndarray]:
    """Prompt [P] (left-padded, left-truncated) and responses [K, R] (right-padded/truncated)."""
    prompt = encode_prompt(tokenizer, rec["prompt"], max_prompt_len, counts)
    responses = np.full((len(rec["responses"]), max_response_len), PAD, np.int32)
    for k, text in enumerate(rec["responses"]):
        r = _encode(tokenizer, text) + ([eos_id] if eos_id is not None else [])
        if len(r) > max_response_len:
            counts["responses_truncated"] += 1
            r = r[:max_response_len]
        if not r:
            raise ValueError("empty response after tokenisation")
        responses[k, :len(r)] = r
    return prompt, responses


def fingerprint(path: Path, *parts) -> str:
    h = hashlib.sha256(path.read_bytes())
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def build_preference_dataset(path, kind: str, tokenizer, out_dir, *, max_prompt_len: int,
                             max_response_len: int, rating_range=None, on_error: str = "raise",
                             validation_fraction: float = 0.1, seed: int = 0,
                             append_eos: bool = True) -> PreferenceDataset:
    """Validate, tokenise and write a local file as a TFDS dataset with train/validation splits.

    Binary feedback (`kind="binary"`) is stored as a rating of +1 (desirable) or −1
    (undesirable). Built datasets are keyed by the file's contents and these arguments, and
    reused. Statistics
    (records read/kept/skipped, truncation counts, the annotators seen) are returned and saved.
    """
    path = check_data_file(path)
    eos_id = tokenizer.eos_token_id if append_eos else None
    key = fingerprint(path, "v2", kind, type(tokenizer).__name__, len(tokenizer), eos_id,
                       max_prompt_len, max_response_len, rating_range, on_error,
                       validation_fraction, seed)
    data_dir = Path(out_dir) / f"{path.stem}-{key}"
    stats_file = data_dir / "stats.json"
    if not stats_file.is_file():
        records, rstats = read_records(path, kind, on_error=on_error, rating_range=rating_range)
        counts = {"prompts_truncated": 0, "responses_truncated": 0}
        annotators = sorted({r["annotator_id"] for r in records if r["annotator_id"]})
        index = {a: i for i, a in enumerate(annotators)}
        rows = []
        for rec in records:
            prompt, responses = tokenize_record(rec, tokenizer, max_prompt_len,
                                                max_response_len, eos_id, counts)
            if "label" in rec:  # binary feedback: desirable +1, undesirable −1
                rating = 2.0 * rec["label"] - 1.0
            else:
                rating = rec.get("rating")
                rating = None if rating is None else normalise_rating(rating, *rating_range)
            rows.append({"prompt": prompt, "responses": responses,
                         "ranks": np.asarray(rec["ranks"], np.int32),
                         "rating": np.float32(0.0 if rating is None else rating),
                         "has_rating": np.int32(rating is not None),
                         "annotator": np.int32(index.get(rec["annotator_id"], -1)),
                         "confidence": np.float32(rec.get("confidence", 1.0)),
                         "rationale": rec["rationale"]})
        order = np.random.default_rng(seed).permutation(len(rows))
        n_val = int(round(validation_fraction * len(rows)))
        splits = {"train": [rows[i] for i in order[n_val:]]}
        # a held-out record that is an exact copy of a training record measures memory, not
        # generalisation: leave it out of validation
        train_keys = {record_key(records[i]) for i in order[n_val:]}
        held_out = [i for i in order[:n_val] if record_key(records[i]) not in train_keys]
        counts["validation_copies_of_training_dropped"] = n_val - len(held_out)
        if held_out:
            splits["validation"] = [rows[i] for i in held_out]
        builder = LocalBuilder(examples=splits,
                               features=_preference_features(max_prompt_len, max_response_len),
                               data_dir=str(data_dir), file_format="array_record")
        builder.prepare()
        stats = {**rstats.as_dict(), **counts, "kind": kind, "annotators": annotators,
                 "file": str(path), "prompts": len(rows),
                 "responses": sum(len(r["ranks"]) for r in rows),
                 "limits": {"max_prompt_len": max_prompt_len,
                            "max_response_len": max_response_len},
                 "num_responses": max(len(r["ranks"]) for r in rows),
                 "splits": {k: len(v) for k, v in splits.items()}}
        stats_file.write_text(json.dumps(stats, indent=2))
    stats = json.loads(stats_file.read_text())
    builder = LocalBuilder(examples={},
                           features=_preference_features(max_prompt_len, max_response_len),
                           data_dir=str(data_dir), file_format="array_record")
    sources = builder.as_data_source()
    return PreferenceDataset(splits=dict(sources), stats=stats, annotators=stats["annotators"],
                             max_prompt_len=max_prompt_len, max_response_len=max_response_len,
                             num_responses=stats["num_responses"], fingerprint=key)


def _to_rows(example: dict, num_responses: int, pad_id: int, index: int = 0) -> dict:
    """One stored example (at `index` of its source) → arrays [K, P+R] in the batch layout."""
    prompt, responses = example["prompt"], example["responses"]
    k = responses.shape[0]
    if k > num_responses:
        raise ValueError(f"an example has {k} responses; the loader's num_responses is "
                         f"{num_responses}")
    seq = np.full((num_responses, prompt.size + responses.shape[1]), PAD, np.int32)
    seq[:k, :prompt.size] = prompt
    seq[:k, prompt.size:] = responses
    ranks = np.full(num_responses, np.iinfo(np.int32).max, np.int32)
    ranks[:k] = example["ranks"]
    valid = np.zeros(num_responses, np.int32)
    valid[:k] = 1
    return {"tokens": np.where(seq == PAD, pad_id, seq), "mask": (seq != PAD).astype(np.int32),
            "ranks": ranks, "valid": valid, "is_comparison": np.int32(k >= 2),
            "rating": np.float32(example["rating"]), "has_rating": np.int32(example["has_rating"]),
            "annotator": np.int32(example["annotator"]), "weight": np.float32(1.0),
            "confidence": np.float32(example.get("confidence", 1.0)),
            "index": np.int32(index)}


def _stack(rows: Sequence[dict], prompt_len: int) -> PreferenceBatch:
    return PreferenceBatch(**{k: np.stack([r[k] for r in rows]) for k in rows[0]},
                           prompt_len=prompt_len)


def batch_examples(examples: Sequence[dict], *, prompt_len: int, num_responses: int,
                   pad_id: int = 0, indices: Optional[Sequence[int]] = None) -> PreferenceBatch:
    """One `PreferenceBatch` of in-memory examples (the stored layout: prompt, responses,
    ranks, rating, has_rating, annotator), e.g. for a loop that labels data as it goes;
    `indices` are the rows' positions in their source (default 0..n−1)."""
    if indices is None:
        indices = range(len(examples))
    return _stack([_to_rows(ex, num_responses, pad_id, int(i))
                   for ex, i in zip(examples, indices)], prompt_len)


def preference_batches(sources: Sequence, batch_size: int, *, prompt_len: int,
                       num_responses: int, pad_id: int = 0, seed: int = 0,
                       weights: Optional[Sequence[float]] = None, num_epochs: Optional[int] = None,
                       shuffle: bool = True):
    """A deterministic, checkpointable grain iterator of `PreferenceBatch`es.

    Several sources (e.g. comparisons and ratings) are mixed by `weights` into the same batches.
    Each process reads its own 1/process_count of every source. `num_epochs=None` repeats
    forever and drops the last partial batch; a finite count keeps it (padded rows weigh 0).
    """
    per_host = []
    for src in sources:
        ds = grain.MapDataset.source(src).map_with_index(
            lambda i, ex, n=len(src): (i % n, ex))  # a repeat passes on i + epoch·n
        ds = ds[jax.process_index()::jax.process_count()]
        if shuffle:
            ds = ds.shuffle(seed=seed)
        per_host.append(ds)
    ds = per_host[0] if len(per_host) == 1 else grain.MapDataset.mix(per_host, weights)
    ds = ds.repeat(num_epochs).map(lambda ie: _to_rows(ie[1], num_responses, pad_id, ie[0]))
    if num_epochs is None:
        ds = ds.batch(batch_size, drop_remainder=True, batch_fn=lambda r: _stack(r, prompt_len))
    else:
        def pad_batch(rows):
            fill = {k: np.zeros_like(v) for k, v in rows[0].items()}
            return _stack(list(rows) + [fill] * (batch_size - len(rows)), prompt_len)
        ds = ds.batch(batch_size, drop_remainder=False, batch_fn=pad_batch)
    return iter(ds.to_iter_dataset())
