"""Every malformed input is a named error (file, line, field) or, with on_error="skip", a counted
skip: encodings, surrogates, paths that are not files, empty or contradictory responses."""
import json
import os

import numpy as np
import pytest

from rlhf_jax import data
from rlhf_jax.data import DataFormatError, read_records
from rlhf_jax.models import CheckpointFormatError, load_hf_config

GOOD = {"prompt": "p", "chosen": "good answer", "rejected": "bad answer"}


def _jsonl(path, *lines):
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def test_non_utf8_byte_is_named_and_skippable(tmp_path):
    f = _jsonl(tmp_path / "a.jsonl", json.dumps(GOOD).encode(),
               b'{"prompt": "p", "chosen": "caf\xe9", "rejected": "x"}')
    with pytest.raises(DataFormatError, match=r"a.jsonl:2: not UTF-8 text \(byte 0xe9"):
        read_records(f, "pairwise")
    records, stats = read_records(f, "pairwise", on_error="skip")
    assert len(records) == 1 and stats.skipped == 1


def test_lone_surrogate_is_named(tmp_path):
    f = _jsonl(tmp_path / "s.jsonl", b'{"prompt": "p", "chosen": "x\\ud800", "rejected": "y"}')
    with pytest.raises(DataFormatError, match=r"s.jsonl:1: field 'chosen' holds an unpaired "
                                              r"surrogate"):
        read_records(f, "pairwise")


@pytest.mark.parametrize("case", ["directory", "missing", "link_loop"])
def test_paths_that_are_not_files(tmp_path, case):
    path = tmp_path / "x.jsonl"
    if case == "directory":
        path.mkdir()
        match = "is a directory"
    elif case == "missing":
        match = "data file does not exist"
    else:
        os.symlink(tmp_path / "y.jsonl", path)
        os.symlink(path, tmp_path / "y.jsonl")
        match = "cannot be read"
    with pytest.raises(DataFormatError, match=f"x.jsonl: {match}"):
        read_records(path, "pairwise")
    tok = data.builtin.train_tokenizer(tmp_path / "tok")
    with pytest.raises(DataFormatError, match=match):  # before any hashing or reading
        data.build_preference_dataset(path, "pairwise", tok, tmp_path / "built",
                                      max_prompt_len=4, max_response_len=4)


@pytest.mark.parametrize("record,match", [
    (dict(GOOD, chosen="   "), "a response is empty or whitespace only"),
    ({"prompt": "p", "responses": ["a", "b", "a"], "ranks": [0, 1, 2]},
     "same text at 0 and 2 with different ranks"),
    ({"prompt": "p", "response": "r", "rating": float("nan")}, "'rating' must be a finite"),
])
def test_contradictory_or_empty_records(tmp_path, record, match):
    kind = ("ranking" if "responses" in record else "rating" if "rating" in record
            else "pairwise")
    f = _jsonl(tmp_path / "r.jsonl", json.dumps(record).encode())
    with pytest.raises(DataFormatError, match=match):
        read_records(f, kind, rating_range=(0.0, 1.0))


def test_duplicates_are_counted_and_kept_out_of_validation(tmp_path):
    sentences = sorted(set(data.builtin.corpus(200, seed=1)))[:20]
    rows = [dict(GOOD, chosen=t) for t in sentences] + [GOOD] * 10
    f = _jsonl(tmp_path / "d.jsonl", *(json.dumps(r).encode() for r in rows))
    records, stats = read_records(f, "pairwise")
    assert len(records) == 30 and stats.duplicates == 9
    tok = data.builtin.train_tokenizer(tmp_path / "tok")
    ds = data.build_preference_dataset(f, "pairwise", tok, tmp_path / "built", max_prompt_len=4,
                                       max_response_len=24, validation_fraction=0.5, seed=0)
    train_rows = {tuple(np.asarray(ex["responses"]).ravel()) for ex in ds.splits["train"]}
    val_rows = [tuple(np.asarray(ex["responses"]).ravel()) for ex in ds.splits["validation"]]
    assert not set(val_rows) & train_rows
    assert ds.stats["validation_copies_of_training_dropped"] == 15 - len(val_rows) > 0


def test_missing_model_directory_says_so(tmp_path):
    with pytest.raises(CheckpointFormatError, match="nowhere: model directory does not exist"):
        load_hf_config(tmp_path / "nowhere")


# hostile files that used to end in a traceback (RecursionError, ValueError, OverflowError)
RATED = {"prompt": "p", "response": "r", "rating": 0.5}
RANKED = {"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1]}


@pytest.mark.parametrize("hostile,kind,match", [
    (b"[" * 100_000, "pairwise", r"x.jsonl:2: not readable JSON \(nested deeper than Python's "
                                 r"limit of about \d+ levels\)"),
    (b'{"prompt": ' + b"[" * 100_000, "pairwise", r"x.jsonl:2: not readable JSON \(nested"),
    (b'{"prompt": "p", "chosen": "a", "rejected": "b", "n": ' + b"9" * 5000 + b"}",
     "pairwise", r"x.jsonl:2: not readable JSON \(an integer with more than \d+ digits\)"),
    (b'{"prompt": "p", "response": "r", "rating": 1' + b"0" * 400 + b"}", "rating",
     r"x.jsonl:2: field 'rating' is an integer of 401 digits, beyond a float; expected a finite "
     r"number in the declared range \[0.0, 1.0\]"),
    (json.dumps(dict(RATED, ratings={"helpful": 10**400})).encode(), "rating",
     r"x.jsonl:2: field 'ratings'\['helpful'\] is an integer of 401 digits"),
    (json.dumps(dict(RANKED, ranks=[0, 10**10])).encode(), "ranking",
     r"x.jsonl:2: field 'ranks'\[1\] is 10000000000; a rank among 2 responses is in \[0, 2\]"),
    (json.dumps(dict(RANKED, ranks=[10**400, 0])).encode(), "ranking",
     r"x.jsonl:2: field 'ranks'\[0\] is an integer of 401 digits; a rank among 2 responses"),
    (json.dumps(dict(RANKED, ranks=[0, -1])).encode(), "ranking", r"'ranks'\[1\] is -1"),
], ids=["nested_100k", "nested_field", "5000_digits", "rating_400_digits",
        "named_rating_400_digits", "rank_1e10", "rank_400_digits", "negative_rank"])
def test_hostile_values_are_named_and_skippable(tmp_path, hostile, kind, match):
    good = {"pairwise": GOOD, "rating": RATED, "ranking": RANKED}[kind]
    f = _jsonl(tmp_path / "x.jsonl", json.dumps(good).encode(), hostile,
               json.dumps(good).encode())
    with pytest.raises(DataFormatError, match=match):
        read_records(f, kind, rating_range=(0.0, 1.0))
    records, stats = read_records(f, kind, on_error="skip", rating_range=(0.0, 1.0))
    assert len(records) == 2 and stats.skipped == 1 and stats.read == 3
    assert sum(stats.reasons.values()) == 1


def test_deeply_nested_element_of_a_json_array_is_named(tmp_path):
    f = tmp_path / "a.json"
    f.write_text("[\n" + json.dumps(GOOD) + ",\n" + "[" * 100_000 + "\n]")
    for on_error in ("raise", "skip"):  # an array's broken element stops the file, by name
        with pytest.raises(DataFormatError, match=r"a.json:3: not readable JSON \(nested"):
            read_records(f, "pairwise", on_error=on_error)


def test_ranks_within_the_responses_are_kept_and_built(tmp_path):
    """0-based and 1-based ranks (ties allowed) pass; a rank beyond int32 no longer reaches the
    dataset builder (it failed there with an OverflowError)."""
    rows = [dict(RANKED, responses=["a", "b", "c"], ranks=[0, 2, 1]),
            dict(RANKED, responses=["a", "b", "c"], ranks=[1, 3, 3]),
            dict(RANKED, ranks=[0, 2**40])]
    f = _jsonl(tmp_path / "r.jsonl", *(json.dumps(r).encode() for r in rows))
    tok = data.builtin.train_tokenizer(tmp_path / "tok")
    ds = data.build_preference_dataset(f, "ranking", tok, tmp_path / "built", max_prompt_len=4,
                                       max_response_len=4, on_error="skip",
                                       validation_fraction=0.0)
    assert ds.stats["kept"] == 2 and ds.stats["skipped"] == 1
    assert sorted(tuple(ex["ranks"]) for ex in ds.splits["train"]) == [(0, 2, 1), (1, 3, 3)]
