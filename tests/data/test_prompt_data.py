"""Prompt datasets: validation errors, left padding/truncation, grain batches and resume."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_jax.data import DataFormatError, build_prompt_dataset, prompt_batches
from tests.hf_reference import train_tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row, match", [({"text": "hi"}, r"p.jsonl:2: field 'prompt' is missing"),
                                        ({"prompt": 3}, r"p.jsonl:2: field 'prompt' must be a str"),
                                        ({"prompt": "  "}, r"p.jsonl:2: field 'prompt' is empty")])
def test_malformed_prompt_named(tmp_path, tok, row, match):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "hello there"}, row])
    with pytest.raises(DataFormatError, match=match):
        build_prompt_dataset(path, tok, tmp_path / "built", max_prompt_len=4)
    ds = build_prompt_dataset(path, tok, tmp_path / "built", max_prompt_len=4, on_error="skip")
    assert ds.stats["kept"] == 1 and ds.stats["skipped"] == 1


def test_left_padding_truncation_and_batches(tmp_path, tok):
    texts = [f"prompt number {i} " + "word " * (i % 5) for i in range(12)]
    pq.write_table(pa.table({"prompt": texts}), tmp_path / "p.parquet")
    ds = build_prompt_dataset(tmp_path / "p.parquet", tok, tmp_path / "built", max_prompt_len=6)
    assert ds.stats["splits"] == {"train": 12} and ds.stats["prompts_truncated"] > 0
    by_text = {ex["text"].decode(): ex["prompt"] for ex in (ds.splits["train"][i] for i in range(12))}
    for text, stored in by_text.items():
        ids = tok(text, add_special_tokens=False)["input_ids"][-6:]
        expected = np.array([-1] * (6 - len(ids)) + ids)  # left-padded, left-truncated
        np.testing.assert_array_equal(stored, expected)
    it = prompt_batches(ds.splits["train"], 4, pad_id=0, seed=1)
    first = [next(it) for _ in range(2)]
    assert first[0]["tokens"].shape == (4, 6) and first[0]["mask"].dtype == np.int32
    assert (first[0]["tokens"][first[0]["mask"] == 0] == 0).all()
    saved = it.get_state()
    after = [next(it) for _ in range(3)]
    it2 = prompt_batches(ds.splits["train"], 4, pad_id=0, seed=1)
    it2.set_state(saved)
    for a, b in zip(after, [next(it2) for _ in range(3)]):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
    # one epoch of 12 prompts covers each exactly once
    seen = np.concatenate([b["tokens"] for b in [*first, after[0]]])
    assert len({tuple(r) for r in seen}) == len({tuple(r) for r in
                                                  (np.where(p < 0, 0, p) for p in by_text.values())})
