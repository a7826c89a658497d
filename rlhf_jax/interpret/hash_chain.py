"""The decision log's hash chain: the canonical JSON every line is written in, the hash that
chains each entry to the one before, the fields of each kind of entry, and the verifier that
names the line where a chain breaks (`rlhf_jax.interpret.decisions` writes the log)."""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from pathlib import Path
from typing import Optional

GENESIS = "0" * 64  # `prev` of the first entry
KIND_FIELDS = {"decision": ("model_hash", "input_hash", "score", "uncertainty", "context"),
               "override": ("who", "what", "target", "old", "new", "reason"),
               "screening": ("screen", "target", "action", "evidence")}
_COMMON = ("seq", "time", "kind", "prev", "hash")


def canonical_json(obj) -> str:
    """The one serialisation that is hashed and written: sorted keys, no spaces, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def entry_hash(entry: dict) -> str:
    """sha256 hex of the canonical JSON of `entry` without its `hash` field."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest()


@dataclasses.dataclass
class VerifyResult:
    """The verdict on a log: `problems` name the line (1-based) and what is wrong."""

    ok: bool
    entries: int
    problems: list


def _entry_problems(entry: dict) -> list[str]:
    kind = entry.get("kind")
    if kind not in KIND_FIELDS:
        return [f"kind {kind!r}, expected one of {sorted(KIND_FIELDS)}"]
    out = []
    expected = set(_COMMON) | set(KIND_FIELDS[kind])
    if set(entry) != expected:
        missing, extra = sorted(expected - set(entry)), sorted(set(entry) - expected)
        out.append(f"fields differ from a {kind} entry's (missing {missing}, unexpected "
                   f"{extra})")
    try:
        datetime.datetime.fromisoformat(entry.get("time"))
    except (TypeError, ValueError):
        out.append(f"time {entry.get('time')!r} is not ISO-8601")
    if kind == "override" and not (isinstance(entry.get("who"), str) and entry["who"].strip()):
        out.append("override without who")
    return out


def verify_log(path, expected_head: Optional[tuple[int, str]] = None) -> VerifyResult:
    """Check every line of the log at `path`: valid canonical JSON with the fields of its kind,
    `hash` recomputed from its content, `prev` equal to the previous line's `hash`, and `seq`
    one more than the previous line's. An edited line (its hash), a deleted, inserted or
    reordered line (the next `prev` and `seq`), and an edited line whose hash was recomputed
    (the next line's `prev`) are each reported at the line where the chain breaks.

    A hash chain alone cannot detect lines removed from the END (the shorter log is a valid
    chain), nor a log rewritten from the start with every hash recomputed. `expected_head`
    (seq, hash), recorded earlier with `DecisionLog.head()` and kept elsewhere, catches both:
    the entry with that seq must still be there with that hash (later entries may follow).
    """
    path = Path(path)
    if not path.is_file():
        return VerifyResult(False, 0, ["no such file"])
    problems, entries = [], 0
    prev_hash, want_seq, last, head_found = GENESIS, 0, None, None
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            entries += 1
            where = f"line {lineno}"
            if not raw.endswith(b"\n"):
                problems.append(f"{where}: no newline at the end (a write cut short?)")
            text = raw.rstrip(b"\n")
            try:
                entry = json.loads(text)
            except (ValueError, RecursionError):
                entry = None
            if not isinstance(entry, dict):
                problems.append(f"{where}: not a JSON object (a torn or edited line)")
                prev_hash, want_seq = None, want_seq + 1
                continue
            problems += [f"{where}: {p}" for p in _entry_problems(entry)]
            seq, stored = entry.get("seq"), entry.get("hash")
            if seq != want_seq:
                problems.append(f"{where}: seq {seq!r}, expected {want_seq} (a line removed, "
                                "inserted or reordered here)")
            if prev_hash is not None and entry.get("prev") != prev_hash:
                problems.append(f"{where}: prev does not match the hash of the line before "
                                "(a line removed, inserted or reordered, or the line before "
                                "edited and rehashed)")
            try:
                recomputed, form = entry_hash(entry), canonical_json(entry)
            except ValueError:  # NaN/Infinity literals
                recomputed, form = None, None
            if recomputed != stored:
                problems.append(f"{where}: hash does not match the entry's content (edited)")
            elif form.encode("ascii") != text:
                problems.append(f"{where}: not in canonical form (edited by hand)")
            if expected_head is not None and seq == expected_head[0] and head_found is None:
                head_found = (lineno, stored)
            prev_hash = stored if isinstance(stored, str) else None
            want_seq = seq + 1 if isinstance(seq, int) else want_seq + 1
            last = (lineno, seq)
    if expected_head is not None:
        head_seq, head_hash = expected_head
        if head_found is None:
            end = "the log is empty" if last is None else \
                f"the log ends at seq {last[1]} (line {last[0]})"
            problems.append(f"expected head seq {head_seq} is missing: {end}; entries were "
                            "removed from the end or the log was replaced")
        elif head_found[1] != head_hash:
            problems.append(f"line {head_found[0]}: seq {head_seq} has hash {head_found[1]}, "
                            f"expected head hash {head_hash} (the log was rewritten)")
    return VerifyResult(not problems, entries, problems)
