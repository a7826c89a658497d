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
