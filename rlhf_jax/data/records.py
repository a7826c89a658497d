"""Reading and validating human-judgment records from local JSONL / Parquet files.

Every record is checked before anything trains. A malformed record raises `DataFormatError`
naming the file, line (1-based; the row number for Parquet) and field, unless
`on_error="skip"`, in which case it is skipped and counted in `RecordStats`.
"""
from __future__ import annotations

import dataclasses
import json
import stat
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Optional

from rlhf_jax.data import conversation as conv
from rlhf_jax.data.conversation import ConversationError
from rlhf_jax.data.record_checks import DataFormatError, check_ranks, json_problem, rating_value

KINDS = ("pairwise", "ranking", "rating", "binary", "prompt", "text")
# what a binary-feedback `label` may be: desirable / undesirable, or thumbs up 1 / down 0
BINARY_LABELS = {"desirable": 1, "undesirable": 0, 1: 1, 0: 0}


@dataclasses.dataclass
class RecordStats:
    """What validation saw: records read, kept, skipped (with reasons)."""

    read: int = 0
    kept: int = 0
    skipped: int = 0
    reasons: Counter = dataclasses.field(default_factory=Counter)
    duplicates: int = 0  # kept records that repeat an earlier one exactly
    lines: list = dataclasses.field(default_factory=list)  # the line of each kept record

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


def truncation_warnings(stats: dict, keys: Optional[dict] = None,
                        share: float = 0.5) -> list[str]:
    """Warnings for a prepared dataset whose length limits cut more than `share` of its prompts
    or responses, each with the numbers and the setting to raise (`keys` maps a limit such as
    "max_prompt_len" to its config key)."""
    keys, limits, out = keys or {}, stats.get("limits", {}), []
    for what, limit in (("prompts", "max_prompt_len"), ("responses", "max_response_len")):
        total, cut = stats.get(what), stats.get(f"{what}_truncated")
        if not total or cut is None or cut <= share * total:
            continue
        name = keys.get(limit, limit)
        noun = "texts" if stats.get("kind") == "text" and what == "prompts" else what
        ends = ("lose their start" if what == "prompts"
                else "lose their end and their end-of-turn / EOS token")
        out.append(f"{stats.get('file', '')}: {cut} of {total} {noun} ({cut / total:.0%}) are "
                   f"cut to {name}={limits.get(limit, '?')} tokens and {ends}; raise {name}")
    return out


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
                              "expected a .jsonl, .json or .parquet data file")
    return path


def iter_raw_records(path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record) for a JSON-lines (.jsonl, or .json as `datasets` writes
    it), JSON-array (.json holding `[{...}, ...]`) or .parquet file. A record that cannot be
    parsed comes as a `DataFormatError` in place of the record (to raise or skip)."""
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
        raise DataFormatError(f"{path}: unsupported file type {path.suffix!r}; expected .jsonl, "
                              ".json or .parquet")
    if path.suffix == ".json" and _starts_with(path, b"["):
        yield from _json_array(path)
        return
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
            except (ValueError, RecursionError) as e:  # also nesting or digits beyond Python's
                yield i, DataFormatError(f"{path}:{i}: {json_problem(e)}")


def _starts_with(path: Path, char: bytes) -> bool:
    """Whether the file's first non-whitespace byte is `char`."""
    with open(path, "rb") as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1] == char
    return False


def _json_array(path: Path) -> Iterator[tuple[int, Any]]:
    """The elements of a file holding one JSON array, each with the line it starts on. The
    array must parse as a whole: a broken element stops the file (no later element can be
    found reliably)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise DataFormatError(f"{path}:{line}: not UTF-8 text (byte 0x"
                              f"{path.read_bytes()[e.start]:02x})") from None
    decoder, line, counted = json.JSONDecoder(), 1, 0

    def skip(at):
        while at < len(text) and text[at] in " \t\r\n":
            at += 1
        return at

    def line_of(at):
        nonlocal line, counted
        line += text.count("\n", counted, at)
        counted = at
        return line

    pos = skip(text.index("[") + 1)
    if text[pos:pos + 1] == "]" and not text[pos + 1:].strip():
        return  # an empty array
    while True:
        pos = skip(pos)
        try:
            value, end = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError) as e:
            at = e.pos if isinstance(e, json.JSONDecodeError) else pos
            raise DataFormatError(f"{path}:{line_of(at)}: {json_problem(e)}") from None
        yield line_of(pos), value
        pos = skip(end)
        if text[pos:pos + 1] == ",":
            pos += 1
            continue
        if text[pos:pos + 1] == "]" and not text[pos + 1:].strip():
            return
        raise DataFormatError(f"{path}:{line_of(pos)}: expected ',' or the closing ']' of the "
                              "array")


def _where(where: str, e: ConversationError) -> DataFormatError:
    return DataFormatError(f"{where}: {e}")


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
        if not conv.response_text(v).strip():
            raise DataFormatError(f"{where}: {fields}: a response is empty or whitespace only")


def _field(rec: dict, field: str, where: str):
    """A text field or a message list (either form; the caller checks they agree)."""
    if field in rec and rec[field] is not None and conv.is_messages(rec[field]):
        try:
            return conv.check_messages(rec[field], field)
        except ConversationError as e:
            raise _where(where, e) from None
    return _text(rec, field, where)


def _prompt(rec: dict, where: str, field: str = "prompt"):
    """A prompt: plain text, a message list ending on a user turn, or an HH-RLHF transcript
    (read up to its last Human turn: a whole transcript, e.g. HH's `chosen`, gives its prompt)."""
    value = _field(rec, field, where)
    try:
        if isinstance(value, str):
            if not conv.is_hh_transcript(value):
                return value
            value = conv.parse_hh(value, field)
            while len(value) > 1 and value[-1]["role"] == "assistant":
                value = value[:-1]  # a whole transcript as a prompt: up to its last Human turn
        return conv.check_prompt(value, field)
    except ConversationError as e:
        raise _where(where, e) from None


def _completion(rec: dict, field: str, where: str, prompt):
    """A response in the prompt's form: text after a text prompt, assistant turns after a
    conversational one."""
    value = _field(rec, field, where)
    if isinstance(prompt, str) != isinstance(value, str):
        raise DataFormatError(
            f"{where}: the record mixes formats: field 'prompt' is "
            f"{'text' if isinstance(prompt, str) else 'a message list'} but field {field!r} is "
            f"{'text' if isinstance(value, str) else 'a message list'}")
    if isinstance(value, list):
        try:
            conv.check_completion(value, field)
        except ConversationError as e:
            raise _where(where, e) from None
    return value


def _pair(rec: dict, where: str) -> tuple:
    """(prompt, chosen, rejected) of the pairwise forms: explicit prompt (text or messages),
    TRL's implicit prompt (whole conversations sharing their prompt turns; UltraFeedback's
    binarised `prompt` string, when given, must be that prompt's last user turn) and HH-RLHF
    transcripts."""
    chosen, rejected = _field(rec, "chosen", where), _field(rec, "rejected", where)
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise DataFormatError(f"{where}: the record mixes formats: fields 'chosen' and "
                              "'rejected' must both be text or both message lists")
    given = rec.get("prompt")
    whole = isinstance(chosen, list) and chosen[0]["role"] != "assistant"
    if isinstance(chosen, str) and given is None:
        if not (conv.is_hh_transcript(chosen) and conv.is_hh_transcript(rejected)):
            raise DataFormatError(f"{where}: fields 'chosen'/'rejected' without 'prompt' must "
                                  "be conversations sharing their prompt (message lists or "
                                  "'\\n\\nHuman:' / '\\n\\nAssistant:' transcripts)")
        try:
            chosen, rejected = conv.parse_hh(chosen, "chosen"), conv.parse_hh(rejected,
                                                                             "rejected")
        except ConversationError as e:
            raise _where(where, e) from None
        whole = True
    if whole and (given is None or isinstance(given, str)):
        try:
            prompt, (chosen, rejected) = conv.split_shared_prompt(
                [chosen, rejected], "'chosen'/'rejected'")
            conv.check_prompt(prompt)
            conv.check_completion(chosen, "chosen")
            conv.check_completion(rejected, "rejected")
        except ConversationError as e:
            raise _where(where, e) from None
        if given is not None:
            _text(rec, "prompt", where)
            if given.strip() != conv.last_user_text(prompt).strip():
                raise DataFormatError(f"{where}: the record mixes formats: field 'prompt' is "
                                      "text that differs from the user turn that the "
                                      "conversations in 'chosen'/'rejected' share")
        return prompt, chosen, rejected
    prompt = _prompt(rec, where)
    return (prompt, _completion(rec, "chosen", where, prompt),
            _completion(rec, "rejected", where, prompt))


def _named_ratings(rec: dict, where: str, rating_range) -> dict:
    """The optional `ratings` field: named (per-aspect) ratings on the declared range."""
    ratings = rec.get("ratings")
    if ratings is None:
        return {}
    if not isinstance(ratings, dict) or not ratings or not all(
            isinstance(k, str) and k for k in ratings):
        raise DataFormatError(f"{where}: field 'ratings' must map aspect names to ratings")
    return {k: rating_value(v, f"field 'ratings'[{k!r}]", where, rating_range)
            for k, v in ratings.items()}


def _ultrafeedback(rec: dict, kind: str, where: str, rating_range) -> list[dict]:
    """openbmb/UltraFeedback's rows: an `instruction` and its `completions`, each rated per
    aspect (`annotations[aspect]["Rating"]`, 1–5, "N/A" when not rated). The instruction is a
    user turn and every completion an assistant turn. A completion's score is the mean of its
    aspect ratings (the `fine-grained_score`); kind "ranking" ranks the completions by it,
    "pairwise" takes the best against the worst, "rating" gives one record per completion with
    the score as `rating` and the aspects as named `ratings`."""
    if kind not in ("ranking", "pairwise", "rating"):
        raise DataFormatError(f"{where}: an UltraFeedback row (instruction, completions) gives "
                              f"ranking, pairwise or rating records, not {kind}")
    instruction = _text(rec, "instruction", where)
    completions = rec["completions"]
    if not isinstance(completions, list) or not completions:
        raise DataFormatError(f"{where}: field 'completions' must be a non-empty list")
    prompt = [{"role": "user", "content": instruction}]
    scored = []
    for i, c in enumerate(completions):
        at = f"field 'completions'[{i}]"
        if not isinstance(c, dict):
            raise DataFormatError(f"{where}: {at} must be an object")
        response = _text(c, "response", f"{where}: {at}")
        notes = c.get("annotations")
        if not isinstance(notes, dict):
            raise DataFormatError(f"{where}: {at}: field 'annotations' must be an object of "
                                  "aspects")
        aspects = {}
        for name, note in notes.items():
            value = note.get("Rating") if isinstance(note, dict) else None
            if value in (None, "N/A"):
                continue
            aspects[name] = rating_value(value, f"{at} annotations[{name!r}]", where,
                                         rating_range or (1, 5))
        if aspects and response.strip():
            scored.append(([{"role": "assistant", "content": response}],
                           sum(aspects.values()) / len(aspects), aspects))
    if len(scored) < (1 if kind == "rating" else 2):
        raise DataFormatError(f"{where}: fewer than {1 if kind == 'rating' else 2} completions "
                              "with text and at least one aspect rating")
    if kind == "rating":
        return [{"prompt": prompt, "responses": [r], "ranks": [0], "rating": s, "ratings": a}
                for r, s, a in scored]
    order = sorted(range(len(scored)), key=lambda i: -scored[i][1])
    if scored[order[0]][1] == scored[order[-1]][1]:
        raise DataFormatError(f"{where}: every completion has the same score; nothing is "
                              "preferred")
    if kind == "pairwise":
        order = [order[0], order[-1]]
    scores = sorted({scored[i][1] for i in order}, reverse=True)
    return [{"prompt": prompt, "responses": [scored[i][0] for i in order],
             "ranks": [scores.index(scored[i][1]) for i in order]}]


def _sft(rec: dict, where: str) -> dict:
    """A text to learn: `text` (plain), `messages` (a conversation: its assistant turns are
    learnt) or `prompt` + `completion` (text or messages: the completion is learnt)."""
    if "messages" in rec and rec["messages"] is not None:
        try:
            messages = conv.check_messages(rec["messages"], "messages")
        except ConversationError as e:
            raise _where(where, e) from None
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise DataFormatError(f"{where}: field 'messages' has no assistant turn with text")
        return {"messages": messages}
    if "text" not in rec and "completion" in rec:
        prompt = _prompt(rec, where)
        completion = _completion(rec, "completion", where, prompt)
        _responses([completion], "field 'completion'", where)
        return {"prompt": prompt, "completion": completion}
    value = _text(rec, "text", where)
    if not value.strip():
        raise DataFormatError(f"{where}: field 'text' is empty")
    return {"text": value}


def _nested(rec: dict, path: str, where: str):
    """The value at a dotted `path` (e.g. RealToxicityPrompts' `prompt.text`) as {leaf: value}."""
    *parents, leaf = path.split(".")
    for name in parents:
        if not isinstance(rec.get(name), dict):
            raise DataFormatError(f"{where}: field {name!r} must be an object holding "
                                  f"{path!r}")
        rec = rec[name]
    return {"prompt": rec.get(leaf)}


def _validate(rec: Any, kind: str, where: str, rating_range, field: Optional[str] = None) \
        -> list[dict]:
    if isinstance(rec, Exception):
        raise rec
    if not isinstance(rec, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    extra = {"annotator_id": _text(rec, "annotator_id", where, optional=True) or "",
             "rationale": _text(rec, "rationale", where, optional=True) or ""}
    objective = _text(rec, "objective", where, optional=True)
    if objective:  # which of a multi-objective reward's objectives the label is about
        extra["objective"] = objective
    if kind == "text":
        return [{**_sft(rec, where), **extra}]
    if kind == "prompt":
        if field and field != "prompt":
            rec = _nested(rec, field, where)
        elif isinstance(rec.get("prompt"), dict) and "role" not in rec["prompt"]:
            raise DataFormatError(f"{where}: field 'prompt' is an object; name the text inside "
                                  "it, e.g. prompts.field=prompt.text")
        value = _prompt(rec, where)
        if isinstance(value, str) and not value.strip():
            raise DataFormatError(f"{where}: field {field or 'prompt'!r} is empty")
        return [{"prompt": value, "responses": [], "ranks": [], **extra}]
    if "instruction" in rec and "completions" in rec and "prompt" not in rec:
        return [{**r, **extra} for r in _ultrafeedback(rec, kind, where, rating_range)]
    if kind == "pairwise":
        prompt, chosen, rejected = _pair(rec, where)
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
        return [out]
    prompt = _prompt(rec, where)
    if kind == "ranking":
        responses = rec.get("responses")
        if not isinstance(responses, list) or len(responses) < 2:
            raise DataFormatError(f"{where}: field 'responses' must be a list of at least two "
                                  "responses")
        responses = [_completion({"responses": r}, "responses", where, prompt)
                     for r in responses]
        ranks = rec.get("ranks")
        ranks = list(range(len(responses))) if ranks is None else \
            check_ranks(ranks, len(responses), where)  # None: given in preference order
        _responses(responses, "field 'responses'", where)
        for a in range(len(responses)):
            for b in range(a):
                if responses[a] == responses[b] and ranks[a] != ranks[b]:
                    raise DataFormatError(f"{where}: field 'responses' has the same text at "
                                          f"{b} and {a} with different ranks")
        return [{"prompt": prompt, "responses": responses, "ranks": ranks, **extra}]
    name = "completion" if "response" not in rec and "completion" in rec else "response"
    response = _completion(rec, name, where, prompt)
    _responses([response], f"field {name!r}", where)
    if kind == "binary":  # thumbs up/down (KTO's unpaired feedback; TRL's boolean label)
        label = rec.get("label")
        if isinstance(label, bool):
            label = int(label)
        if not isinstance(label, (str, int)) or label not in BINARY_LABELS:
            raise DataFormatError(f"{where}: field 'label'={rec.get('label')!r} must be "
                                  "'desirable' or 'undesirable' (or true / false, 1 / 0)")
        return [{"prompt": prompt, "responses": [response], "ranks": [0],
                 "label": BINARY_LABELS[label], **extra}]
    ratings = _named_ratings(rec, where, rating_range)
    if rec.get("rating") is None and ratings:
        rating = sum(ratings.values()) / len(ratings)  # the mean of the aspects
    else:
        rating = rating_value(rec.get("rating"), "field 'rating'", where, rating_range)
    out = {"prompt": prompt, "responses": [response], "ranks": [0], "rating": rating, **extra}
    return [{**out, "ratings": ratings}] if ratings else [out]


def normalise_rating(rating, low: float, high: float):
    """Map a rating from its declared range [low, high] onto [−1, 1]."""
    return 2.0 * (rating - low) / (high - low) - 1.0


def read_records(path, kind: str, *, on_error: str = "raise",
                 rating_range: Optional[tuple[float, float]] = None,
                 field: Optional[str] = None) -> tuple[list[dict], RecordStats]:
    """Validated records in a common form: prompt, responses, ranks (+ rating, named ratings,
    label, confidence, annotator, rationale).

    `kind` is "pairwise", "ranking", "rating", "binary" (a response labelled desirable or
    undesirable: `label` 1 / 0, TRL's true / false), "prompt" (prompts alone, for sampling;
    `field` names a nested one such as RealToxicityPrompts' "prompt.text") or "text" (SFT:
    `text`, `messages`, or `prompt` + `completion`); ratings need their declared
    `rating_range`. Every kind reads plain text or conversations (see `data.conversation`):
    a prompt is text or messages ending on a user turn, a response text or assistant turns,
    and a record uses one form throughout; pairwise records may be whole conversations sharing
    their prompt (TRL's implicit prompt, HH-RLHF transcripts); an UltraFeedback row gives
    ranking, pairwise or rating records (`_ultrafeedback`). In the common form a conversational
    prompt is a message list and each response a list of assistant messages.
    Exact duplicates of an earlier record are kept and counted (`stats.duplicates`); dataset
    builders keep them out of validation splits. `stats.read` counts the file's records (lines),
    `kept` the records returned (an UltraFeedback row rated per completion gives several).
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
            records = _validate(rec, kind, f"{path}:{line}", rating_range, field)
        except DataFormatError as e:
            if on_error == "raise":
                raise
            stats.skipped += 1
            stats.reasons[str(e).split(": ", 1)[-1][:80]] += 1
            continue
        for record in records:
            key = record_key(record)
            stats.duplicates += key in seen
            seen.add(key)
            out.append(record)
            stats.lines.append(line)
            stats.kept += 1
    if not out:
        raise DataFormatError(f"{path}: no valid {kind} records ({stats.read} read)")
    return out, stats
