"""Preference datasets: tokenise validated records into TFDS array_record files, load with grain.

Layout: each response is stored after its prompt; the prompt is left-padded to `max_prompt_len`
(and cut from the left), the response right-padded to `max_response_len` (cut from the right;
it ends with the chat template's end-of-turn token, or EOS in the plain form: `data.chat`).
Batches are padded to the rungs of `data.buckets` that hold their longest example.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from flax import struct

from rlhf_jax.data.buckets import BucketedBatches, LengthSource, ladder
from rlhf_jax.data.chat import ChatTemplateError, encoder_for, tokenizer_key
from rlhf_jax.data.records import (DataFormatError, check_data_file, normalise_rating,
                                   read_records, record_key)

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
    aspects: np.ndarray = None  # [B, A] named ratings in [−1, 1], NaN where not rated (or None)
    # [B] which objective (index into the dataset's objectives) a row's label is about, −1 none
    # (None: the dataset names no objectives)
    objective: np.ndarray = None
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
    aspects: list = dataclasses.field(default_factory=list)  # names of the per-aspect ratings
    objectives: list = dataclasses.field(default_factory=list)  # names in `objective` fields


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


def _preference_features(prompt_len: int, response_len: int, num_aspects: int = 0,
                         objectives: bool = False):
    t = tfds.features.Tensor
    return tfds.features.FeaturesDict({
        "prompt": t(shape=(prompt_len,), dtype=np.int32),
        "responses": t(shape=(None, response_len), dtype=np.int32),
        "ranks": t(shape=(None,), dtype=np.int32),
        "rating": np.float32, "has_rating": np.int32, "annotator": np.int32,
        "confidence": np.float32, "aspects": t(shape=(num_aspects,), dtype=np.float32),
        # the objective's index, stored only when the file names objectives (shape [1] or [0])
        "objective": t(shape=(int(objectives),), dtype=np.int32),
        "rationale": tfds.features.Text()})


def encode_prompt(tokenizer, text, max_prompt_len: int, counts: dict,
                  suffix: Sequence[int] = ()) -> np.ndarray:
    """Prompt ids [P] (+ `suffix`, e.g. EOS), left-padded with PAD and cut to `max_prompt_len`
    (`data.chat.ChatEncoder.prompt_ids`: text from the left; a conversation, rendered with the
    generation prompt, by turns and then text, never in its control tokens)."""
    enc = encoder_for(tokenizer)
    if suffix:
        ids = enc.prompt_ids(text)[0] + list(suffix)
        cut = len(ids) > max_prompt_len
        ids = ids[len(ids) - max_prompt_len:] if cut else ids
    else:
        ids, cut = enc.prompt_ids(text, max_prompt_len)
    counts["prompts_truncated"] += int(cut)
    return _left_padded(ids, max_prompt_len)


def _left_padded(ids: Sequence[int], length: int) -> np.ndarray:
    out = np.full(length, PAD, np.int32)
    if len(ids):
        out[-len(ids):] = ids
    return out


def tokenize_record(rec: dict, tokenizer, max_prompt_len: int, max_response_len: int,
                    eos_id: Optional[int], counts: dict) -> tuple[np.ndarray, np.ndarray]:
    """Prompt [P] (left-padded, cut as `encode_prompt` cuts) and responses [K, R]
    (right-padded, cut from the right). A response ends with the template's end-of-turn token,
    or in the plain form with EOS unless `eos_id` is None (`data.chat`)."""
    enc = encoder_for(tokenizer)
    prompt = encode_prompt(tokenizer, rec["prompt"], max_prompt_len, counts)
    responses = np.full((len(rec["responses"]), max_response_len), PAD, np.int32)
    for k, response in enumerate(rec["responses"]):
        r = enc.response_ids(rec["prompt"], response)
        if eos_id is None and not isinstance(response, list) and enc.eos is not None:
            r = r[:-1]  # plain text without EOS
        if len(r) > max_response_len:
            counts["responses_truncated"] += 1
            r = r[:max_response_len]
        if not r:
            raise ValueError("empty response after tokenisation")
        responses[k, :len(r)] = r
    return prompt, responses


def fingerprint(path: Path, *parts) -> str:
    """A built dataset's key: the file's contents and every setting that shapes its rows."""
    h = hashlib.sha256(path.read_bytes())
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def tokenize_records(path, records: list, stats, tokenize, on_error: str):
    """`tokenize(record)` of every record; a record the tokenizer cannot encode
    (`ChatTemplateError`, e.g. a prompt whose control tokens do not fit) raises naming the
    file's line, or with on_error="skip" is skipped and counted in `stats` (a `RecordStats`).
    Returns (kept records, their rows)."""
    kept, rows = [], []
    for rec, line in zip(records, stats.lines or [None] * len(records)):
        try:
            rows.append(tokenize(rec))
        except ChatTemplateError as e:
            if on_error == "raise":
                raise DataFormatError(f"{path}:{line}: {e}") from None
            stats.kept -= 1
            stats.skipped += 1
            stats.reasons[str(e)[:80]] += 1
            continue
        kept.append(rec)
    if not rows:
        raise DataFormatError(f"{path}: no record could be tokenised ({stats.skipped} skipped)")
    return kept, rows


def _lengths_file(data_dir: Path, split: str) -> Path:
    return data_dir / f"lengths-{split}.npy"


def save_lengths(builder, data_dir: Path, lengths) -> None:
    """Each split's `lengths(example)` in the order the built source holds the examples (TFDS
    writes them in its own order, not the order given), to `lengths-<split>.npy`."""
    for name, source in builder.as_data_source().items():
        np.save(_lengths_file(data_dir, name),
                np.asarray([lengths(source[i]) for i in range(len(source))], np.int32))


def write_splits(rows: list, data_dir: Path, features, *, seed: int,
                 validation_fraction: float, lengths) -> dict:
    """Split `rows` (a seeded permutation; the first `validation_fraction` held out), write them
    as a TFDS array_record dataset in `data_dir` with each split's `lengths(example)`
    (`save_lengths`); return the split sizes."""
    order = np.random.default_rng(seed).permutation(len(rows))
    n_val = int(round(validation_fraction * len(rows)))
    splits = {"train": [rows[i] for i in order[n_val:]]}
    if n_val:
        splits["validation"] = [rows[i] for i in order[:n_val]]
    builder = LocalBuilder(examples=splits, features=features, data_dir=str(data_dir),
                           file_format="array_record")
    builder.prepare()
    save_lengths(builder, data_dir, lengths)
    return {k: len(v) for k, v in splits.items()}


def load_lengths(data_dir: Path, split: str) -> np.ndarray:
    """The lengths `save_lengths` wrote for a split."""
    return np.load(_lengths_file(data_dir, split))


def _example_lengths(row: dict) -> list:
    """[prompt tokens, longest response's tokens] of a stored row."""
    return [int((row["prompt"] != PAD).sum()), int((row["responses"] != PAD).sum(1).max())]


def check_not_all_cut(path, stats: dict, what: str, key: str) -> None:
    """Refuse a length setting that cut every response (none keeps its end)."""
    total, cut = stats.get(what), stats.get(f"{what}_truncated", 0)
    if total and cut >= total:
        raise DataFormatError(
            f"{path}: every one of the {total} {what} was cut to {key}={stats['limits'][key]} "
            f"tokens, so none ends with its end-of-turn / EOS token; raise {key}")


def build_preference_dataset(path, kind: str, tokenizer, out_dir, *, max_prompt_len: int,
                             max_response_len: int, rating_range=None, on_error: str = "raise",
                             validation_fraction: float = 0.1, seed: int = 0,
                             append_eos: bool = True, buckets: str = "auto") -> PreferenceDataset:
    """Validate, tokenise and write a local file as a TFDS dataset with train/validation splits.

    Prompts and responses go through the tokenizer's chat template when the records are
    conversations (`data.chat`). Binary feedback (`kind="binary"`) is stored as a rating of +1
    (desirable) or −1 (undesirable); named per-aspect ratings (UltraFeedback's) as a vector
    over `stats["aspects"]`. Built datasets are keyed by the file's contents, the tokenizer and
    these arguments, and reused. Each split is a `LengthSource` whose batches are padded to the
    rungs of `buckets` (`data.buckets.ladder`) of each axis. Statistics (records
    read/kept/skipped, truncation counts, the annotators seen) are returned and saved. A
    `max_response_len` that cuts every response is refused.
    """
    path = check_data_file(path)
    eos_id = tokenizer.eos_token_id if append_eos else None
    key = fingerprint(path, "v4", kind, tokenizer_key(tokenizer), eos_id, max_prompt_len,
                      max_response_len, rating_range, on_error, validation_fraction, seed)
    data_dir = Path(out_dir) / f"{path.stem}-{key}"
    stats_file = data_dir / "stats.json"
    if not stats_file.is_file():
        records, rstats = read_records(path, kind, on_error=on_error, rating_range=rating_range)
        counts = {"prompts_truncated": 0, "responses_truncated": 0}
        aspects = sorted({a for r in records for a in r.get("ratings", {})})
        records, tokenised = tokenize_records(
            path, records, rstats, lambda rec: tokenize_record(
                rec, tokenizer, max_prompt_len, max_response_len, eos_id, counts), on_error)
        annotators = sorted({r["annotator_id"] for r in records if r["annotator_id"]})
        index = {a: i for i, a in enumerate(annotators)}
        objectives = sorted({r["objective"] for r in records if r.get("objective")})
        which = {o: i for i, o in enumerate(objectives)}
        rows = []
        for rec, (prompt, responses) in zip(records, tokenised):
            if "label" in rec:  # binary feedback: desirable +1, undesirable −1
                rating = 2.0 * rec["label"] - 1.0
            else:
                rating = rec.get("rating")
                rating = None if rating is None else normalise_rating(rating, *rating_range)
            named = rec.get("ratings", {})
            rows.append({"prompt": prompt, "responses": responses,
                         "ranks": np.asarray(rec["ranks"], np.int32),
                         "rating": np.float32(0.0 if rating is None else rating),
                         "has_rating": np.int32(rating is not None),
                         "annotator": np.int32(index.get(rec["annotator_id"], -1)),
                         "confidence": np.float32(rec.get("confidence", 1.0)),
                         "aspects": np.asarray(
                             [normalise_rating(named[a], *rating_range) if a in named
                              else np.nan for a in aspects], np.float32),
                         "objective": np.asarray([which.get(rec.get("objective"), -1)]
                                                 if objectives else [], np.int32),
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
        stats = {**rstats.as_dict(), **counts, "kind": kind, "annotators": annotators,
                 "aspects": aspects, "objectives": objectives, "file": str(path),
                 "prompts": len(rows),
                 "responses": sum(len(r["ranks"]) for r in rows),
                 "limits": {"max_prompt_len": max_prompt_len,
                            "max_response_len": max_response_len},
                 "num_responses": max(len(r["ranks"]) for r in rows),
                 "splits": {k: len(v) for k, v in splits.items()}}
        check_not_all_cut(path, stats, "responses", "max_response_len")
        builder = LocalBuilder(examples=splits,
                               features=_preference_features(max_prompt_len, max_response_len,
                                                             len(aspects), bool(objectives)),
                               data_dir=str(data_dir), file_format="array_record")
        builder.prepare()
        save_lengths(builder, data_dir, _example_lengths)
        stats_file.write_text(json.dumps(stats, indent=2))
    stats = json.loads(stats_file.read_text())
    builder = LocalBuilder(examples={},
                           features=_preference_features(max_prompt_len, max_response_len,
                                                         len(stats["aspects"]),
                                                         bool(stats["objectives"])),
                           data_dir=str(data_dir), file_format="array_record")
    rungs = (ladder(max_prompt_len, buckets), ladder(max_response_len, buckets))
    sources = {name: LengthSource(src, load_lengths(data_dir, name), rungs)
               for name, src in builder.as_data_source().items()}
    return PreferenceDataset(splits=sources, stats=stats, annotators=stats["annotators"],
                             max_prompt_len=max_prompt_len, max_response_len=max_response_len,
                             num_responses=stats["num_responses"], fingerprint=key,
                             aspects=stats["aspects"], objectives=stats["objectives"])


def _to_rows(example: dict, num_responses: int, pad_id: int, index: int = 0,
             shape: Optional[tuple[int, int]] = None) -> dict:
    """One stored example (at `index` of its source) → arrays [K, P+R] in the batch layout, the
    prompt and responses cut to `shape` = (P, R) (padding only; default: as stored)."""
    prompt, responses = example["prompt"], example["responses"]
    if shape is not None:
        p, r = shape
        if (prompt[:-p] != PAD).any() or (responses[:, r:] != PAD).any():
            raise ValueError(f"an example does not fit the padded shape {shape}")
        prompt, responses = prompt[prompt.size - p:], responses[:, :r]
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
    out = {"tokens": np.where(seq == PAD, pad_id, seq), "mask": (seq != PAD).astype(np.int32),
           "ranks": ranks, "valid": valid, "is_comparison": np.int32(k >= 2),
           "rating": np.float32(example["rating"]), "has_rating": np.int32(example["has_rating"]),
           "annotator": np.int32(example["annotator"]), "weight": np.float32(1.0),
           "confidence": np.float32(example.get("confidence", 1.0)),
           "index": np.int32(index)}
    aspects = example.get("aspects")
    if aspects is not None and np.size(aspects):
        out["aspects"] = np.asarray(aspects, np.float32)
    objective = example.get("objective")
    if objective is not None and np.size(objective):
        out["objective"] = np.int32(np.asarray(objective).reshape(-1)[0])
    return out


def _stack(rows: Sequence[dict], prompt_len: int) -> PreferenceBatch:
    return PreferenceBatch(**{k: np.stack([r[k] for r in rows]) for k in rows[0]},
                           prompt_len=prompt_len)


def _padded(rows: list, batch_size: int, prompt_len: int) -> PreferenceBatch:
    """`rows` and weight-0 rows of zeros up to `batch_size`."""
    fill = {k: np.zeros_like(v) for k, v in rows[0].items()}
    return _stack(list(rows) + [fill] * (batch_size - len(rows)), prompt_len)


def batch_examples(examples: Sequence[dict], *, prompt_len: int, num_responses: int,
                   pad_id: int = 0, indices: Optional[Sequence[int]] = None) -> PreferenceBatch:
    """One `PreferenceBatch` of in-memory examples (the stored layout: prompt, responses,
    ranks, rating, has_rating, annotator), e.g. for a loop that labels data as it goes;
    `indices` are the rows' positions in their source (default 0..n−1)."""
    if indices is None:
        indices = range(len(examples))
    return _stack([_to_rows(ex, num_responses, pad_id, int(i))
                   for ex, i in zip(examples, indices)], prompt_len)


def bucketed_batch(source, indices, shape, valid=None, *, num_responses: int,
                   pad_id: int) -> PreferenceBatch:
    """The rows `indices` of `source` padded to `shape` (P, R); rows not `valid` (padding of a
    last partial batch) weigh 0."""
    rows = [_to_rows(source[int(i)], num_responses, pad_id, int(i), shape) for i in indices]
    batch = _stack(rows, shape[0])
    if valid is not None:
        batch = batch.replace(weight=batch.weight * np.asarray(valid, np.float32))
    return batch


def preference_batches(sources: Sequence, batch_size: int, *, prompt_len: int,
                       num_responses: int, pad_id: int = 0, seed: int = 0,
                       weights: Optional[Sequence[float]] = None, num_epochs: Optional[int] = None,
                       shuffle: bool = True):
    """A deterministic, checkpointable iterator of `PreferenceBatch`es of `batch_size` rows
    (this process's share of the batch).

    One `LengthSource` with several rungs (a built dataset's split, `data.buckets`) gives
    batches of examples of similar length, each padded to its own (P, R) shape
    (`BucketedBatches`); otherwise every batch has the stored shape, from grain. Several
    sources (e.g. comparisons and ratings) are mixed by `weights` into the same batches
    (padded to the stored shape). Each process reads its own share. `num_epochs=None` repeats
    forever and drops the last partial batch; a finite count keeps it (padded rows weigh 0).
    """
    if len(sources) == 1 and isinstance(sources[0], LengthSource) and \
            sources[0].buckets_for(batch_size, num_epochs):
        src = sources[0]
        return BucketedBatches(src, batch_size, partial(
            bucketed_batch, src, num_responses=num_responses, pad_id=pad_id), seed=seed,
            shuffle=shuffle, num_epochs=num_epochs)
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
        ds = ds.batch(batch_size, drop_remainder=False,
                      batch_fn=lambda rows: _padded(rows, batch_size, prompt_len))
    return iter(ds.to_iter_dataset())
