"""Preference data: validation errors name file/line/field, tokenisation layout, grain loading."""
import json

import numpy as np
import pytest

from rlhf_jax.data import render_plain
from rlhf_jax.data import (DataFormatError, build_preference_dataset, describe_dataset,
                           preference_batches, read_records)
from tests.hf_reference import train_tiny_tokenizer


def _jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize("kind,row,match", [
    ("pairwise", {"prompt": "p", "chosen": "a"}, r"data.jsonl:2: field 'rejected' is missing"),
    ("pairwise", {"prompt": "p", "chosen": 3, "rejected": "b"}, r":2: field 'chosen' must be a "
                                                                r"string, got int"),
    ("pairwise", "{not json", r"data.jsonl:2: not valid JSON"),
    ("ranking", {"prompt": "p", "responses": ["a"]}, r":2: field 'responses' must be a list of "
                                                      r"at least two"),
    ("ranking", {"prompt": "p", "responses": ["a", "b"], "ranks": [0, -1]}, r"field 'ranks'"),
    ("rating", {"prompt": "p", "response": "a", "rating": 11}, r"'rating'=11 is outside the "
                                                                r"declared range \[1, 10\]"),
    ("binary", {"prompt": "p", "response": "a", "label": "good"}, r"data.jsonl:2: field "
     r"'label'='good' must be 'desirable' or 'undesirable' \(or true / false, 1 / 0\)"),
    ("binary", {"prompt": "p", "response": "a", "label": "yes"}, r"field 'label'='yes' must be"),
    ("binary", {"prompt": "p", "response": "a", "label": 2}, r"field 'label'=2 must be"),
    ("binary", {"prompt": "p", "response": "a"}, r"field 'label'=None must be"),
    ("binary", {"prompt": "p", "response": " ", "label": 1}, r"field 'response': a response "
                                                              r"is empty"),
])
def test_malformed_record_named(tmp_path, kind, row, match):
    good = {"pairwise": {"prompt": "p", "chosen": "a", "rejected": "b"},
            "ranking": {"prompt": "p", "responses": ["a", "b"]},
            "rating": {"prompt": "p", "response": "a", "rating": 3},
            "binary": {"prompt": "p", "response": "a", "label": "desirable"}}[kind]
    path = _jsonl(tmp_path / "data.jsonl", [good, row, good])
    with pytest.raises(DataFormatError, match=match):
        read_records(path, kind, rating_range=(1, 10))
    records, stats = read_records(path, kind, on_error="skip", rating_range=(1, 10))
    assert len(records) == 2 and stats.as_dict()["skipped"] == 1 and stats.read == 3


def test_dialogues_and_ties(tmp_path):
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: cat?\n\nAssistant: a pet"
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: cat?\n\nAssistant: no idea"
    path = _jsonl(tmp_path / "hh.jsonl", [{"chosen": chosen, "rejected": rejected,
                                          "annotator_id": "x", "rationale": "kinder"}])
    (rec,), _ = read_records(path, "pairwise")
    # an HH-RLHF transcript is a conversation: the shared turns up to the last Human turn
    assert rec["prompt"] == [{"role": "user", "content": "hi"},
                             {"role": "assistant", "content": "hello"},
                             {"role": "user", "content": "cat?"}]
    assert rec["responses"] == [[{"role": "assistant", "content": "a pet"}],
                                [{"role": "assistant", "content": "no idea"}]]
    assert rec["rationale"] == "kinder"
    # without a chat template it is rendered back to the transcript it came from
    assert render_plain(rec["prompt"], True) == chosen[:chosen.rindex(" a pet")]
    path = _jsonl(tmp_path / "rank.jsonl", [{"prompt": "p", "responses": ["a", "b", "c"],
                                            "ranks": [1, 0, 1]}])
    (rec,), _ = read_records(path, "ranking")
    assert rec["ranks"] == [1, 0, 1]


def test_parquet_input(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["p1", "p2"], "chosen": ["a", "b"],
                             "rejected": ["c", None]}), tmp_path / "d.parquet")
    with pytest.raises(DataFormatError, match=r"d.parquet:2: field 'rejected' is missing"):
        read_records(tmp_path / "d.parquet", "pairwise")


def test_build_tokenise_and_load(tmp_path, tok):
    rows = [{"prompt": f"the cat sat on the mat {i}", "chosen": "a dog ran in the park",
             "rejected": "a cat", "annotator_id": f"a{i % 3}"} for i in range(30)]
    path = _jsonl(tmp_path / "pairs.jsonl", rows)
    ds = build_preference_dataset(path, "pairwise", tok, tmp_path / "built", max_prompt_len=5,
                                  max_response_len=4, validation_fraction=0.2)
    assert ds.stats["splits"] == {"train": 24, "validation": 6}
    n_ids = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert ds.stats["prompts_truncated"] == sum(n_ids(r["prompt"]) > 5 for r in rows) > 0
    long_responses = sum((n_ids(r["chosen"]) + 1 > 4) + (n_ids(r["rejected"]) + 1 > 4)
                         for r in rows)
    assert ds.stats["responses_truncated"] == long_responses > 0
    line = describe_dataset(ds.stats, {"max_prompt_len": "data.max_prompt_len"})
    assert line == (f"data {path} (pairwise): 30 records read, 30 kept, 0 skipped; splits: "
                    f"train 24, validation 6; truncated: {ds.stats['prompts_truncated']} of 30 "
                    f"prompts to data.max_prompt_len=5 tokens, {long_responses} of 60 responses "
                    "to max_response_len=4 tokens")
    assert ds.annotators == ["a0", "a1", "a2"]
    # prompt truncated from the left (keeps its end), response from the right (keeps its start)
    prompt_ids = tok("the cat sat on the mat 0", add_special_tokens=False)["input_ids"]
    chosen_ids = tok("a dog ran in the park", add_special_tokens=False)["input_ids"]
    batches = preference_batches([ds.splits["train"]], 4, prompt_len=5, num_responses=2,
                                 pad_id=tok.pad_token_id, seed=1)
    b = next(batches)
    assert b.tokens.shape == (4, 2, 9) and b.mask.shape == (4, 2, 9)
    assert (b.ranks == [0, 1]).all() and (b.is_comparison == 1).all()
    stored_prompts = {tuple(ex["prompt"]) for ex in ds.splits["train"]} | {
        tuple(ex["prompt"]) for ex in ds.splits["validation"]}
    assert tuple(prompt_ids[-5:]) in stored_prompts  # the end of the prompt is kept
    assert list(b.tokens[0, 0, 5:9]) == chosen_ids[:4]  # the start of the response is kept
    assert (b.mask[:, :, :] == 1).all()  # every slot is filled here after truncation
    # same seed, same order; a restored position continues identically
    again = preference_batches([ds.splits["train"]], 4, prompt_len=5, num_responses=2, seed=1)
    np.testing.assert_array_equal(next(again).tokens, b.tokens)
    state = batches.get_state()
    nxt = next(batches)
    resumed = preference_batches([ds.splits["train"]], 4, prompt_len=5, num_responses=2, seed=1)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed).tokens, nxt.tokens)
    # reuse of a built dataset, and a finite pass keeps the last partial batch with weight 0
    assert build_preference_dataset(path, "pairwise", tok, tmp_path / "built", max_prompt_len=5,
                                    max_response_len=4, validation_fraction=0.2).stats == ds.stats
    val = list(preference_batches([ds.splits["validation"]], 4, prompt_len=5, num_responses=2,
                                  num_epochs=1, shuffle=False))
    assert len(val) == 2 and val[1].weight.tolist() == [1, 1, 0, 0]


def test_short_response_right_padded(tmp_path, tok):
    path = _jsonl(tmp_path / "s.jsonl", [{"prompt": "hi", "chosen": "a", "rejected": "b"}] * 4)
    ds = build_preference_dataset(path, "pairwise", tok, tmp_path / "b", max_prompt_len=4,
                                  max_response_len=6, validation_fraction=0)
    b = next(preference_batches([ds.splits["train"]], 2, prompt_len=4, num_responses=2,
                                pad_id=tok.pad_token_id))
    ids = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    a = ids("a") + [tok.eos_token_id]
    assert list(b.tokens[0, 0, 4:4 + len(a)]) == a
    assert list(b.mask[0, 0, 4:]) == [1] * len(a) + [0] * (6 - len(a))
    assert list(b.mask[0, 0, :4]) == [0] * (4 - len(ids("hi"))) + [1] * len(ids("hi"))


def test_mixed_ratings_and_pairs(tmp_path, tok):
    pairs = _jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 8)
    ratings = _jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "response": "a", "rating": 7}] * 8)
    dp = build_preference_dataset(pairs, "pairwise", tok, tmp_path / "b", max_prompt_len=3,
                                  max_response_len=3, validation_fraction=0)
    dr = build_preference_dataset(ratings, "rating", tok, tmp_path / "b", max_prompt_len=3,
                                  max_response_len=3, rating_range=(1, 7), validation_fraction=0)
    b = next(preference_batches([dp.splits["train"], dr.splits["train"]], 8, prompt_len=3,
                                num_responses=2, weights=[0.5, 0.5]))
    assert b.is_comparison.sum() == 4 and b.has_rating.sum() == 4
    assert np.allclose(b.rating[b.has_rating == 1], 1.0)  # 7 on [1, 7] → 1
    assert (b.valid[b.has_rating == 1] == [1, 0]).all()


def test_binary_feedback_is_a_rating_of_plus_or_minus_one(tmp_path, tok):
    rows = [{"prompt": "p", "response": "good day", "label": "desirable", "annotator_id": "u1"},
            {"prompt": "p", "response": "bad day", "label": "undesirable"},
            {"prompt": "q", "response": "fine", "label": 1},
            {"prompt": "q", "response": "awful", "label": 0}]
    ds = build_preference_dataset(_jsonl(tmp_path / "thumbs.jsonl", rows), "binary", tok,
                                  tmp_path / "built", max_prompt_len=4, max_response_len=12,
                                  validation_fraction=0.0)
    assert ds.stats["kind"] == "binary" and ds.annotators == ["u1"]
    batch = next(preference_batches([ds.splits["train"]], 4, prompt_len=4, num_responses=1,
                                    shuffle=False, num_epochs=1))
    assert batch.has_rating.tolist() == [1, 1, 1, 1] and batch.is_comparison.tolist() == [0] * 4
    by_index = dict(zip(batch.index.tolist(), batch.rating.tolist()))
    labels = {i: ds.splits["train"][i]["rating"] for i in range(4)}
    assert by_index == labels and sorted(labels.values()) == [-1.0, -1.0, 1.0, 1.0]
