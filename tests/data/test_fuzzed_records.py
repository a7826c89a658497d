"""Fuzzed preference files: every malformed record is a named error or a counted skip.

Valid records of each kind are mutated at random (fields dropped, replaced by values of the wrong
type, NaN and infinities, empty and whitespace text, unpaired surrogates, wrong rank lists) and
whole lines are damaged (cut short, invalid UTF-8 bytes, JSON that is not an object, blank lines).
Then, line by line, reading with on_error="raise" either accepts the record or raises
`DataFormatError` naming the file and the line, and never any other exception; reading the whole
file with on_error="skip" counts every line as kept or skipped, with a reason for each skip; and
building the dataset from it (tokenising every kept record) succeeds.
"""
import json
import random

import pytest

from rlhf_jax import data
from rlhf_jax.data import DataFormatError, read_records

VALID = {
    "pairwise": {"prompt": "the cat", "chosen": "a fine answer", "rejected": "bad",
                 "annotator_id": "a1", "rationale": "clearer"},
    "ranking": {"prompt": "the dog", "responses": ["one", "two", "three"], "ranks": [0, 2, 1]},
    "rating": {"prompt": "a day", "response": "sunny and warm", "rating": 3.5},
}
RANGE = (1.0, 5.0)
JUNK = [None, 0, -1, 7, 2.5, float("nan"), float("inf"), -float("inf"), True, False, "", "   ",
        "\ud800", "x\udfff", "ok", "\n\nAssistant:", "é😀", [], [1], ["a"], ["a", "a"], ["a", 1],
        [0, 0], [-1, 0], [0.5, 1], [True, False], {}, {"a": 1}, "a" * 300]


def _mutate(rng: random.Random, record: dict) -> dict:
    rec = dict(record)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        keys = list(rec) + ["prompt", "chosen", "rejected", "responses", "ranks", "response",
                            "rating", "annotator_id", "rationale", "extra"]
        key = rng.choice(keys)
        if op < 0.3:
            rec.pop(key, None)
        elif op < 0.8:
            rec[key] = rng.choice(JUNK)
        elif key in ("chosen", "rejected") and "chosen" in rec:
            rec["rejected"] = rec["chosen"]  # identical responses
        else:
            rec["responses"] = ["same", "same"]
            rec["ranks"] = [0, 1]
    return rec


def _line(rng: random.Random, kind: str) -> bytes:
    """One line of a fuzzed file (without its newline)."""
    choice = rng.random()
    if choice < 0.15:
        return json.dumps(VALID[kind]).encode()
    if choice < 0.75:
        return json.dumps(_mutate(rng, VALID[kind])).encode()
    text = json.dumps(VALID[kind]).encode()
    if choice < 0.83:
        return text[:rng.randint(0, len(text) - 1)]  # cut short
    if choice < 0.9:
        at = rng.randint(1, len(text) - 2)
        return text[:at] + bytes([rng.choice([0x80, 0xC3, 0xE9, 0xFF])]) + text[at:]
    return rng.choice([b"[1, 2]", b"42", b'"text"', b"null", b"", b"   ", b"{}",
                       b'{"prompt": 1e999}', b"NaN"])


def _check_one_line(path, kind):
    """The outcome of reading a one-line file: "kept", "blank" or the error raised."""
    try:
        records, stats = read_records(path, kind, rating_range=RANGE)
    except DataFormatError as e:
        message = str(e)
        assert message.startswith(f"{path}:1: ") or message == (
            f"{path}: no valid {kind} records (0 read)"), message
        return message
    assert stats.kept == 1 and len(records) == 1
    return "kept"


@pytest.mark.parametrize("kind", sorted(VALID))
def test_every_fuzzed_record_is_named_or_counted(tmp_path, kind):
    rng = random.Random(f"fuzz-{kind}")
    lines = [_line(rng, kind) for _ in range(150)]
    outcomes = []
    for i, line in enumerate(lines):
        one = tmp_path / f"one-{i}.jsonl"
        one.write_bytes(line + b"\n")
        outcomes.append(_check_one_line(one, kind))  # any other exception fails the test
    kept = outcomes.count("kept")
    blank = sum(1 for o in outcomes if o.endswith("(0 read)"))
    assert 0 < kept < len(lines) - blank  # the fuzzing produced both kinds of line

    whole = tmp_path / "all.jsonl"
    whole.write_bytes(b"".join(line + b"\n" for line in lines))
    with pytest.raises(DataFormatError, match=r"all.jsonl:\d+: "):
        read_records(whole, kind, rating_range=RANGE)
    records, stats = read_records(whole, kind, on_error="skip", rating_range=RANGE)
    assert stats.read == len(lines) - blank  # blank lines are not records
    assert (stats.kept, stats.skipped) == (kept, len(lines) - blank - kept)
    assert len(records) == kept and sum(stats.reasons.values()) == stats.skipped

    tok = data.builtin.train_tokenizer(tmp_path / "tok")
    ds = data.build_preference_dataset(whole, kind, tok, tmp_path / "built", max_prompt_len=6,
                                       max_response_len=16, rating_range=RANGE, on_error="skip",
                                       validation_fraction=0.2)
    assert ds.stats["kept"] == kept and ds.stats["skipped"] == stats.skipped
    assert sum(ds.stats["splits"].values()) + ds.stats[
        "validation_copies_of_training_dropped"] == kept
