"""A tamper-evident decision log: every reward-model decision used in training or deployment,
and every human override of a score or label, appended to a hash-chained JSONL file.

Each line is the canonical JSON (`json.dumps(entry, sort_keys=True, separators=(",", ":"))`,
ASCII) of one entry: `seq` (0, 1, 2, …), `time` (UTC ISO-8601), `kind` ("decision",
"override" or "screening") and its fields, `prev` (the previous entry's `hash`; 64 zeros for the first) and
`hash` = sha256 hex of the canonical JSON of the entry without `hash`.

    decision: model_hash, input_hash, score (number, or a list for per-member scores),
              uncertainty (number or null), context ("ppo/iteration 12", "deployment", …)
    override: who, what ("score" or "label"), target (input hash or label id), old, new, reason
    screening: screen (which defence), target ("annotator:<id>", "example:<n>", "token:<t>"),
               action ("quarantine", "down-weight", "drop", "keep", …), evidence (an object)

Non-finite numbers are written as the strings "nan", "inf" and "-inf" (JSON has none). The
canonical form, the entry hashes and the verifier are `interpret.hash_chain`'s; the scorer
that logs decisions as it scores is `interpret.logged_scorer`'s.
Command line: `python -m rlhf_jax.interpret.decisions verify|head|override LOG ...` (see `main`).
"""
from __future__ import annotations

import argparse
import datetime
import fcntl
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from rlhf_jax.interpret.hash_chain import GENESIS, canonical_json, entry_hash, verify_log


class DecisionLogError(Exception):
    """A decision log that cannot be appended to (a torn last line, a malformed entry) or an
    entry with invalid fields."""


def _jsonable(value):
    """Plain JSON values from NumPy/JAX scalars and arrays; non-finite floats as strings."""
    if isinstance(value, (np.ndarray, jax.Array)):
        return _jsonable(np.asarray(value).tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise DecisionLogError(f"{value!r} ({type(value).__name__}) cannot be written to a decision "
                           "log; expected a number, string, list, dict or None")


def _number(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    out = _jsonable(value)
    ok = isinstance(out, (int, float, str)) and not isinstance(out, bool) and (
        not isinstance(out, str) or out in ("nan", "inf", "-inf"))
    if not ok:
        raise DecisionLogError(f"{name}={value!r}: expected a number"
                               + (" or None" if allow_none else ""))
    return float(out) if isinstance(out, int) else out


def _text(name: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DecisionLogError(f"{name}={value!r}: expected a non-empty string")
    return value


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def _reverse_lines(f, chunk: int = 1 << 16):
    """The lines of binary file `f` (without newlines) last first, reading from the end in
    chunks. The first item is b"" when the file ends with a newline (or is empty)."""
    f.seek(0, os.SEEK_END)
    pos, tail = f.tell(), b""
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        f.seek(pos)
        parts = (f.read(step) + tail).split(b"\n")
        tail = parts[0]
        yield from reversed(parts[1:])
    yield tail


def _count_lines(f) -> int:
    """Lines in `f`, a final line without a newline included (used only to name a bad line)."""
    f.seek(0)
    count, last = 0, b"\n"
    while block := f.read(1 << 20):
        count, last = count + block.count(b"\n"), block[-1:]
    return count + (last != b"\n")


def _parse_entry(raw: bytes) -> Optional[dict]:
    try:
        entry = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: a line of deeply nested brackets
        return None
    ok = (isinstance(entry, dict) and isinstance(entry.get("seq"), int)
          and isinstance(entry.get("hash"), str) and len(entry["hash"]) == 64)
    return entry if ok else None


class DecisionLog:
    """An append-only, hash-chained JSONL decision log at `path` (see the module docstring).

    Appends hold an exclusive `fcntl.flock` on the file, so several processes appending to one
    log (on a local file system; flock over NFS depends on the server) keep a single chain; each
    append reads only the last line, writes all its entries at once, flushes and fsyncs. A log
    whose last line is torn (a crash mid-write) is refused, never overwritten or truncated.
    """

    def __init__(self, path):
        self.path = Path(path)

    def append_decision(self, *, model_hash: str, input_hash: str, score,
                        uncertainty=None, context: str = "") -> dict:
        """Append one reward-model decision; returns the entry written."""
        return self.append_decisions(model_hash=model_hash, input_hashes=[input_hash],
                                     scores=[score], uncertainties=[uncertainty],
                                     context=context)[0]

    def append_decisions(self, *, model_hash: str, input_hashes: Sequence[str],
                         scores: Sequence, uncertainties: Optional[Sequence] = None,
                         context: str = "") -> list[dict]:
        """Append one decision per row (one lock, one write, one fsync); returns the entries."""
        _text("model_hash", model_hash)
        uncertainties = [None] * len(scores) if uncertainties is None else list(uncertainties)
        if not len(input_hashes) == len(scores) == len(uncertainties):
            raise DecisionLogError(f"{self.path}: {len(input_hashes)} input hashes, "
                                   f"{len(scores)} scores and {len(uncertainties)} "
                                   "uncertainties; expected one of each per decision")
        if not isinstance(context, str):
            raise DecisionLogError(f"context={context!r}: expected a string")
        bodies = []
        for h, s, u in zip(input_hashes, scores, uncertainties):
            s = _jsonable(s)
            score = ([_number("score", x) for x in s] if isinstance(s, list)
                     else _number("score", s))
            bodies.append({"kind": "decision", "model_hash": model_hash,
                           "input_hash": _text("input_hash", h), "score": score,
                           "uncertainty": _number("uncertainty", u, allow_none=True),
                           "context": context})
        return self._append(bodies)

    def record_override(self, *, who: str, target: str, old, new, reason: str,
                        what: str = "score") -> dict:
        """Append a human override: reviewer `who` changed the `what` ("score" or "label") of
        `target` (an input hash or a label id) from `old` to `new`, because `reason`."""
        if what not in ("score", "label"):
            raise DecisionLogError(f"what={what!r}: expected 'score' or 'label'")
        if not isinstance(reason, str):
            raise DecisionLogError(f"reason={reason!r}: expected a string")
        return self._append([{"kind": "override", "who": _text("who", who), "what": what,
                              "target": _text("target", target), "old": _jsonable(old),
                              "new": _jsonable(new), "reason": reason}])[0]

    def record_screenings(self, screen: str, rows: Sequence[dict]) -> list[dict]:
        """Append a defence's decisions, one per row {"target", "action", "evidence"} (one lock,
        one write): what `screen` (e.g. "annotator_screening") did to each annotator, example
        or token, and the numbers it decided on."""
        bodies = []
        for row in rows:
            if not isinstance(row.get("evidence"), dict):
                raise DecisionLogError(f"screening {row.get('target')!r}: evidence must be an "
                                       "object")
            bodies.append({"kind": "screening", "screen": _text("screen", screen),
                           "target": _text("target", row.get("target")),
                           "action": _text("action", row.get("action")),
                           "evidence": _jsonable(row["evidence"])})
        return self._append(bodies) if bodies else []

    def head(self) -> Optional[tuple[int, str]]:
        """(seq, hash) of the last entry, None for an empty or missing log. Keep it somewhere
        else (a run record, a ticket) and pass it to `verify_log(expected_head=)` later."""
        if not self.path.exists():
            return None
        with open(self.path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            try:
                last = self._last_entry(f)
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return None if last is None else (last["seq"], last["hash"])

    def find_last(self, predicate: Callable[[dict], bool]) -> Optional[dict]:
        """The newest entry with `predicate(entry)` true, reading from the end of the log
        (unparsable lines are skipped: `verify_log` reports them); None when none matches."""
        if not self.path.exists():
            return None
        with open(self.path, "rb") as f:
            for raw in _reverse_lines(f):
                entry = _parse_entry(raw) if raw else None
                if entry is not None and predicate(entry):
                    return entry
        return None

    def _last_entry(self, f) -> Optional[dict]:
        lines = _reverse_lines(f)
        ending = next(lines)
        last = next(lines, None) if ending == b"" else ending
        if last is None:
            return None
        entry = _parse_entry(last)
        if entry is None or ending != b"":
            lineno = _count_lines(f)
            why = "has no newline at its end" if ending != b"" else "is not a valid entry"
            raise DecisionLogError(
                f"{self.path}: line {lineno}, the last line, {why} (a write cut short by a "
                "crash?); refusing to append to it. Run `python -m rlhf_jax.interpret.decisions "
                f"verify {self.path}` and repair or move the log by hand")
        return entry

    def _append(self, bodies: list[dict]) -> list[dict]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        with open(self.path, "a+b", buffering=0) as f:  # unbuffered: nothing is written late
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                last = self._last_entry(f)
                seq, prev = (0, GENESIS) if last is None else (last["seq"] + 1, last["hash"])
                now, entries = _utc_now(), []
                for i, body in enumerate(bodies):
                    entry = {"seq": seq + i, "time": now, **body, "prev": prev}
                    entry["hash"] = prev = entry_hash(entry)
                    entries.append(entry)
                data = memoryview(b"".join(canonical_json(e).encode("ascii") + b"\n"
                                           for e in entries))
                while data:  # all of it under the lock, however the OS splits the write
                    data = data[os.write(f.fileno(), data):]
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        if created:  # the new file's directory entry, so that a crash cannot lose the file
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return entries


def record_override(log, *, who: str, target: str, old, new, reason: str,
                    what: str = "score") -> dict:
    """`DecisionLog(log).record_override(...)` for a path or a `DecisionLog`."""
    log = log if isinstance(log, DecisionLog) else DecisionLog(log)
    return log.record_override(who=who, target=target, old=old, new=new, reason=reason,
                               what=what)


def model_hash(params) -> str:
    """sha256 over the parameter leaves in tree-path order: each leaf's path, dtype, shape and
    bytes (fetched with `jax.device_get`, one leaf at a time). Deterministic across runs and
    shardings; with leaves spread over several processes it gathers them (call it on all)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            from jax.experimental import multihost_utils
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        arr = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        header = canonical_json([jax.tree_util.keystr(path), str(arr.dtype), list(arr.shape),
                                 arr.nbytes])
        digest.update(header.encode("ascii") + b"\n")
        digest.update(arr.tobytes())
    return digest.hexdigest()


def input_hash(tokens_row, mask_row) -> str:
    """sha256 hex of the real tokens (mask > 0) of one row, written as decimal ids joined by
    commas ("5,17,2"): padding, left or right, does not change it."""
    tokens, mask = np.asarray(tokens_row).reshape(-1), np.asarray(mask_row).reshape(-1)
    if tokens.shape != mask.shape:
        raise ValueError(f"input_hash: tokens {tokens.shape} and mask {mask.shape} differ")
    ids = ",".join(str(int(t)) for t in tokens[mask > 0])
    return hashlib.sha256(ids.encode("ascii")).hexdigest()


def text_hash(prompt: str, response: str) -> str:
    """sha256 hex of the canonical JSON `[prompt, response]` (UTF-8 text, before tokenising)."""
    return hashlib.sha256(canonical_json([prompt, response]).encode("ascii")).hexdigest()


def _value(text: str):
    """A command-line value: JSON when it parses (0.3, -1, null, "x"), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _head_arg(text: str) -> tuple[int, str]:
    seq, sep, digest = text.partition(":")
    if not sep or not seq.isdigit() or len(digest) != 64:
        raise argparse.ArgumentTypeError(f"--head {text!r}: expected SEQ:HASH, e.g. "
                                         "12:<64 hex digits> (from the `head` command)")
    return int(seq), digest


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`verify LOG [--head SEQ:HASH]` (exit 1 on problems), `head LOG` (prints SEQ:HASH),
    `override LOG --who NAME --target ID --old X --new Y --reason TEXT [--what score|label]`."""
    parser = argparse.ArgumentParser(prog="python -m rlhf_jax.interpret.decisions",
                                     description="Verify or extend a decision log.")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check the hash chain; exit 1 on any problem")
    v.add_argument("log")
    v.add_argument("--head", type=_head_arg, help="SEQ:HASH recorded earlier (detects a "
                   "truncated tail)")
    h = sub.add_parser("head", help="print SEQ:HASH of the last entry")
    h.add_argument("log")
    o = sub.add_parser("override", help="record a reviewer's correction of a score or label")
    o.add_argument("log")
    helps = {"who": "the reviewer", "target": "the input hash or label id corrected",
             "old": "the value before (JSON: 0.3, -1, null; else text)",
             "new": "the value after (JSON: 0.3, -1, null; else text)",
             "reason": "why the reviewer changed it"}
    for name, text in helps.items():
        o.add_argument(f"--{name}", required=True, help=text)
    o.add_argument("--what", choices=("score", "label"), default="score")
    args = parser.parse_args(argv)
    try:
        if args.command == "verify":
            result = verify_log(args.log, expected_head=args.head)
            for problem in result.problems:
                print(f"{args.log}: {problem}")
            print(f"{args.log}: {'ok' if result.ok else 'TAMPERED OR DAMAGED'}, "
                  f"{result.entries} entries, {len(result.problems)} problems")
            return 0 if result.ok else 1
        if args.command == "head":
            head = DecisionLog(args.log).head()
            print("empty" if head is None else f"{head[0]}:{head[1]}")
            return 0
        entry = record_override(args.log, who=args.who, target=args.target,
                                old=_value(args.old), new=_value(args.new),
                                reason=args.reason, what=args.what)
        print(f"{args.log}: override recorded as seq {entry['seq']} ({entry['hash']})")
        return 0
    except (DecisionLogError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
