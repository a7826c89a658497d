"""Reading and validating human-judgment records from local JSONL / Parquet files.

Every record is checked before anything trains. A malformed record raises `DataFormatError`
naming the file, line (1-based; the row number for Parquet) and field, unless
`on_error="skip"`, in which case it is skipped and counted in `RecordStats`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import stat
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Optional

KINDS = ("pairwise", "ranking", "rating", "binary", "prompt", "text")
# what a binary-feedback `label` may be: desirable / undesirable, or thumbs up 1 / down 0
BINARY_LABELS = {"desirable": 1, "undesirable": 0, 1: 1, 0: 0}
ASSISTANT = "\n\nAssistant:"


class DataFormatError(ValueError):
    """A data file or one of its records is malformed."""


@dataclasses.dataclass
class RecordStats:
    """What validation saw: records read, kept, skipped (with reasons)."""

    read: int = 0
    kept: int = 0
    skipped: int = 0
    reasons: Counter = dataclasses.field(default_factory=Counter)
    duplicates: int = 0  # kept records that repeat an earlier one exactly

    def as_dict(self) -> dict:
        """A JSON-friendly view."""
        return {"read": self.read, "kept": self.kept, "skipped": self.skipped,
                "skip_reasons": dict(self.reasons), "duplicates": self.duplicates}


def describe_dataset(stats: dict, keys: Optional[dict] = None) -> str:
    """One line for the end of data preparation: the file, the records kept and skipped, the
    splits, and what was truncated with the limit that caused it (`keys` maps a limit such as
    "max_prompt_len" to the config key that sets it, e.g. "data.max_prompt_len")."""
    keys = keys or {}
    limits = stats.get("limits", {})
    parts = [f"{stats['read']} records read, {stats['kept']} kept, {stats['skipped']} skipped"
             + (f" ({', '.join(f'{n} {r}' for r, n in stats['skip_reasons'].items())})"
                if stats.get("skip_reasons") else "")]
    if stats.get("duplicates"):
        parts.append(f"{stats['duplicates']} exact duplicates")
    splits = ", ".join(f"{k} {v}" for k, v in stats.get("splits", {}).items())
    dropped = stats.get("validation_copies_of_training_dropped", 0)
    parts.append(f"splits: {splits}" + (f" ({dropped} held-out copies of training records left "
                                         "out)" if dropped else ""))
    cut = []
    for what, limit, total in (("prompts", "max_prompt_len", stats.get("prompts")),
                               ("responses", "max_response_len", stats.get("responses"))):
        n = stats.get(f"{what}_truncated")
        if n is None:
            continue
        name = keys.get(limit, limit)
        where = f"{name}={limits[limit]} tokens" if limit in limits else name
        noun = "texts" if stats.get("kind") == "text" and what == "prompts" else what
        cut.append(f"{n}{f' of {total}' if total is not None else ''} {noun} to {where}")
    parts.append("truncated: " + ", ".join(cut) if cut else "nothing truncated")
    return f"data {stats.get('file', '')} ({stats.get('kind', '?')}): " + "; ".join(parts)


def record_key(record: dict) -> str:
    """A canonical string of a validated record: equal for exact duplicates."""
    return json.dumps(record, sort_keys=True)


def check_data_file(path) -> Path:
    """The path of a readable data file, or a `DataFormatError` saying what it is instead (missing,
    a directory, a dangling link or a link loop)."""
    path = Path(path)
    try:
        info = path.stat()  # follows symlinks: a loop or a dangling link fails here
    except FileNotFoundError:
        raise DataFormatError(f"{path}: data file does not exist") from None
    except OSError as e:
        raise DataFormatError(f"{path}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise DataFormatError(f"{path}: is {'a directory' if path.is_dir() else 'not a file'}; "
                              "expected a .jsonl or .parquet data file")
    return path


def iter_raw_records(path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record) for a .jsonl / .json-lines or .parquet file."""
    path = check_data_file(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
            raise DataFormatError(f"{path}: not a readable Parquet file ({e})") from e
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, row
        return
    if path.suffix not in (".jsonl", ".json"):
        raise DataFormatError(f"{path}: unsupported file type {path.suffix!r}; expected .jsonl "
                              "or .parquet")
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield i, DataFormatError(f"{path}:{i}: not UTF-8 text (byte "
                                         f"0x{raw[e.start]:02x} at column {e.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                yield i, DataFormatError(f"{path}:{i}: not valid JSON ({e.msg})")


def split_dialogue(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Anthropic-HH style: the prompt is the shared prefix up to the last assistant turn.

    Returns (prompt ending in "Assistant:", chosen reply, rejected reply).
    """
    common = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        common += 1
    cut = chosen.rfind(ASSISTANT, 0, common + 1)
    if cut < 0:
        raise ValueError(f"no shared prefix ending in {ASSISTANT.strip()!r}")
    cut += len(ASSISTANT)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _text(rec: dict, field: str, where: str, optional: bool = False) -> Optional[str]:
    if field not in rec or rec[field] is None:
        if optional:
            return None
        raise DataFormatError(f"{where}: field {field!r} is missing")
    value = rec[field]
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: field {field!r} must be a string, got "
                              f"{type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataFormatError(f"{where}: field {field!r} holds an unpaired surrogate "
                              f"{value[e.start]!r} at character {e.start}, not text") from None
    return value


def _responses(values: list, fields: str, where: str) -> None:
    """Every response must hold text (not only whitespace)."""
    for v in values:
        if not v.strip():
            raise DataFormatError(f"{where}: {fields}: a response is empty or whitespace only")


def _validate(rec: Any, kind: str, where: str, rating_range) -> dict:
    if isinstance(rec, Exception):
        raise rec
    if not isinstance(rec, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    extra = {"annotator_id": _text(rec, "annotator_id", where, optional=True) or "",
             "rationale": _text(rec, "rationale", where, optional=True) or ""}
    if kind == "pairwise":
        chosen, rejected = _text(rec, "chosen", where), _text(rec, "rejected", where)
        prompt = _text(rec, "prompt", where, optional=True)
        if prompt is None:  # whole dialogues
            try:
                prompt, chosen, rejected = split_dialogue(chosen, rejected)
            except ValueError as e:
                raise DataFormatError(f"{where}: fields 'chosen'/'rejected' without 'prompt' "
                                      f"must be dialogues sharing a prefix ({e})") from None
        _responses([chosen, rejected], "fields 'chosen'/'rejected'", where)
        if chosen == rejected:
            raise DataFormatError(f"{where}: fields 'chosen' and 'rejected' are identical")
        out = {"prompt": prompt, "responses": [chosen, rejected], "ranks": [0, 1], **extra}
        if rec.get("probability") is not None:  # a soft label: P(chosen is better)
            prob = rec["probability"]
            if isinstance(prob, bool) or not isinstance(prob, (int, float)) or \
                    not 0.5 <= prob <= 1.0:
                raise DataFormatError(f"{where}: field 'probability'={prob!r} must be a number "
                                      "in [0.5, 1] (the probability that 'chosen' is better)")
            out["confidence"] = float(prob)
        return out
    if kind in ("prompt", "text"):  # prompts for sampling; text for PPO-ptx
        value = _text(rec, kind, where)
        if not value.strip():
            raise DataFormatError(f"{where}: field {kind!r} is empty")
        return {"prompt": value, "responses": [], "ranks": [], **extra}
    prompt = _text(rec, "prompt", where)
    if kind == "ranking":
        responses = rec.get("responses")
        if not isinstance(responses, list) or len(responses) < 2 or not all(
                isinstance(r, str) for r in responses):
            raise DataFormatError(f"{where}: field 'responses' must be a list of at least two "
                                  "strings")
        ranks = rec.get("ranks")
        if ranks is None:
            ranks = list(range(len(responses)))  # given in preference order
        elif (not isinstance(ranks, list) or len(ranks) != len(responses)
              or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0
                         for r in ranks)):
            raise DataFormatError(f"{where}: field 'ranks' must be {len(responses)} "
                                  "non-negative ints (0 = best, ties allowed)")
        elif len(set(ranks)) < 2:
            raise DataFormatError(f"{where}: field 'ranks' ties every response; nothing is "
                                  "preferred")
        _responses(responses, "field 'responses'", where)
        for a in range(len(responses)):
            for b in range(a):
                if responses[a] == responses[b] and ranks[a] != ranks[b]:
                    raise DataFormatError(f"{where}: field 'responses' has the same text at "
                                          f"{b} and {a} with different ranks")
        return {"prompt": prompt, "responses": responses, "ranks": ranks, **extra}
    response = _text(rec, "response", where)
    _responses([response], "field 'response'", where)
    if kind == "binary":  # thumbs up/down (KTO's unpaired feedback)
        label = rec.get("label")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or \
                label not in BINARY_LABELS:
            raise DataFormatError(f"{where}: field 'label'={label!r} must be 'desirable' or "
                                  "'undesirable' (or thumbs 1 / 0)")
        return {"prompt": prompt, "responses": [response], "ranks": [0],
                "label": BINARY_LABELS[label], **extra}
    rating = rec.get("rating")
    if isinstance(rating, bool) or not isinstance(rating, (int, float)) or \
            not math.isfinite(rating):
        raise DataFormatError(f"{where}: field 'rating' must be a finite number")
    low, high = rating_range
    if not low <= rating <= high:
        raise DataFormatError(f"{where}: field 'rating'={rating} is outside the declared range "
                              f"[{low}, {high}]")
    return {"prompt": prompt, "responses": [response], "ranks": [0], "rating": float(rating),
            **extra}


def normalise_rating(rating, low: float, high: float):
    """Map a rating from its declared range [low, high] onto [−1, 1]."""
    return 2.0 * (rating - low) / (high - low) - 1.0


def read_records(path, kind: str, *, on_error: str = "raise",
                 rating_range: Optional[tuple[float, float]] = None) -> tuple[list[dict], RecordStats]:
    """Validated records in a common form: prompt, responses, ranks (+ rating, annotator, rationale).

    `kind` is "pairwise", "ranking", "rating", "binary" (a response labelled desirable or
    undesirable: `label` 1 / 0), "prompt" (prompts alone, for sampling) or "text"; ratings need
    their declared `rating_range`. Exact duplicates of an earlier record are kept and
    counted (`stats.duplicates`); dataset builders keep them out of validation splits.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={on_error!r}: expected 'raise' or 'skip'")
    if kind == "rating":
        if rating_range is None or len(rating_range) != 2 or rating_range[0] >= rating_range[1]:
            raise ValueError(f"rating data needs rating_range=(low, high) with low < high, got "
                             f"{rating_range!r}")
    stats, out, seen = RecordStats(), [], set()
    for line, rec in iter_raw_records(path):
        stats.read += 1
        try:
            record = _validate(rec, kind, f"{path}:{line}", rating_range)
            key = record_key(record)
            stats.duplicates += key in seen
            seen.add(key)
            out.append(record)
            stats.kept += 1
        except DataFormatError as e:
            if on_error == "raise":
                raise
            stats.skipped += 1
            stats.reasons[str(e).split(": ", 1)[-1][:80]] += 1
    if not out:
        raise DataFormatError(f"{path}: no valid {kind} records ({stats.read} read)")
    return out, stats
