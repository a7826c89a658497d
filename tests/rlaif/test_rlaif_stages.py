"""AI labels as soft preference records, critique-revision (SL-CAI) into the SFT stage, and RLAIF
end to end beside human labels."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import data, losses, rlaif
from rlhf_jax.models import DecoderModel, init_params, preset, save_hf_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_ai_labels_are_soft_pairwise_records(tmp_path):
    judge = rlaif.constitution_judge(seed=0)  # the packaged constitution
    rng = np.random.default_rng(0)
    pairs = [(p, data.builtin.random_response(rng), data.builtin.random_response(rng))
             for p in data.builtin.PROMPTS * 20]
    recs = rlaif.ai_label(judge, pairs)
    ids = {r["annotator_id"] for r in recs}
    assert ids == {"ai:constitution:positive", "ai:constitution:harmless",
                   "ai:constitution:varied"}
    assert all(0.5 <= r["probability"] <= 1 for r in recs)
    path = data.builtin.write_jsonl(tmp_path / "ai.jsonl", recs)
    back, stats = data.read_records(path, "pairwise")
    assert stats.skipped == 0 and [r["confidence"] for r in back] == [r["probability"]
                                                                       for r in recs]
    # the positive principle's labels follow VADER
    from rlhf_jax.eval.scorers import vader_compound
    pos = [r for r in recs if r["annotator_id"].endswith(":positive")]
    agree = np.mean([vader_compound("", r["chosen"]) >= vader_compound("", r["rejected"])
                     for r in pos])
    assert agree == 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b",
                               "probability": 0.3}) + "\n")
    with pytest.raises(data.DataFormatError, match="field 'probability'=0.3"):
        data.read_records(bad, "pairwise")


def test_confidence_reaches_the_batches(tmp_path):
    tok = data.builtin.train_tokenizer(tmp_path / "tok")
    path = data.builtin.write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "tell me", "chosen": f"good {i}", "rejected": f"bad {i}",
         "probability": 0.5 + i / 20} for i in range(10)] + [
        {"prompt": "tell me", "chosen": "happy", "rejected": "sad"}])
    ds = data.build_preference_dataset(path, "pairwise", tok, tmp_path / "ds", max_prompt_len=4,
                                       max_response_len=4, validation_fraction=0.0)
    batch = next(data.preference_batches([ds.splits["train"]], 11, prompt_len=4,
                                         num_responses=2, num_epochs=1, shuffle=False))
    want = [0.5 + i / 20 for i in range(10)] + [1.0]
    np.testing.assert_allclose(np.sort(batch.confidence), np.sort(want), rtol=1e-6)


def test_soft_labels_in_the_bradley_terry_loss():
    rng = np.random.default_rng(0)
    d = rng.normal(0, 2, 64)
    eps = rng.uniform(0, 0.5, 64)
    got = losses.bradley_terry_loss(jnp.asarray(d, jnp.float32), jnp.zeros(64),
                                    label_smoothing=jnp.asarray(eps, jnp.float32))
    want = (1 - eps) * np.logaddexp(0, -d) + eps * np.logaddexp(0, d)
    np.testing.assert_allclose(got, want, rtol=1e-5)  # float32 softplus, O(1) values
    # in the reward objective: confidence 1 is exactly a hard label, confidence c a flip
    # probability of 1 − c
    from types import SimpleNamespace
    from rlhf_jax.reward.objective import RewardLossConfig, reward_loss_terms
    r = jnp.asarray(rng.normal(0, 1, (8, 2)), jnp.float32)
    batch = SimpleNamespace(valid=jnp.ones((8, 2)), ranks=jnp.tile(jnp.array([0, 1]), (8, 1)),
                            rating=jnp.zeros(8), confidence=None)
    hard, _, _ = reward_loss_terms(r, batch, RewardLossConfig())
    ones, _, _ = reward_loss_terms(r, SimpleNamespace(**{**batch.__dict__,
                                                         "confidence": jnp.ones(8)}),
                                   RewardLossConfig())
    np.testing.assert_array_equal(np.asarray(hard), np.asarray(ones))
    conf = jnp.full(8, 0.8)
    soft, _, _ = reward_loss_terms(r, SimpleNamespace(**{**batch.__dict__, "confidence": conf}),
                                   RewardLossConfig(label_smoothing=0.1))
    e = 0.1 + 0.2 - 2 * 0.1 * 0.2  # one flip or the other, not both
    dd = np.asarray(r[:, 0] - r[:, 1], np.float64)
    np.testing.assert_allclose(soft, (1 - e) * np.logaddexp(0, -dd) + e * np.logaddexp(0, dd),
                               rtol=1e-5)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy")
    tok = data.builtin.train_tokenizer(root / "tok")
    config = preset("tiny-llama", vocab_size=len(tok))
    return save_hf_checkpoint(root / "policy", config,
                              init_params(DecoderModel(config), jax.random.key(0)),
                              tokenizer=tok)


def test_sl_cai_learns_the_revision_not_the_prompt():
    from rlhf_jax.stages.sl_cai import _sft_record
    from tests.chat_tokenizers import chat_tokenizer

    for template in (None, "chatml"):
        tok = chat_tokenizer(template=template, vocab_size=400)
        prompt = "how are you" if template is None else [{"role": "user", "content": "how are you"}]
        ids, mask = data.ChatEncoder(tok).sft_ids(_sft_record(prompt, "fine thanks"))
        learnt = tok.decode([i for i, m in zip(ids, mask) if m])
        assert "fine thanks" in learnt and "how are you" not in learnt
        assert sum(mask) < len(ids)


@pytest.mark.slow
def test_critique_revision_into_sft(tmp_path, policy):
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "critique_revision.py"),
                        f"--config.policy_dir={policy}", f"--config.run_dir={tmp_path / 'sl'}",
                        "--config.num_prompts=6", "--config.rounds=2",
                        "--config.max_new_tokens=6", "--config.sft.steps=22"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(x) for x in (tmp_path / "sl" / "revisions.jsonl").read_text().split("\n")
            if x]
    assert len(recs) == 6 and all(len(x["rounds"]) == 2 for x in recs)
    assert {rd["principle"] for x in recs for rd in x["rounds"]} <= {"positive", "harmless",
                                                                      "varied"}
    assert all(x["final"] in [rd["revision"] for rd in x["rounds"]] + [x["initial"]]
               for x in recs)
    assert (tmp_path / "sl" / "sft" / "export" / "model.safetensors").is_file()
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "critique_revision.py"),
                        f"--config.policy_dir={policy}", f"--config.run_dir={tmp_path / 'sl'}",
                        "--config.num_prompts=7", "--config.rounds=2",
                        "--config.max_new_tokens=6", "--config.sft.steps=22"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "num_prompts" in r.stderr  # stale revisions are not reused


@pytest.mark.slow
def test_rlaif_quick_beside_human_labels(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "rlaif.py"),
                        "--config.quick=true", f"--config.run_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0.5 < summary["ai_gold_agreement"] <= 1 and 0.4 < summary["ai_human_agreement"] <= 1
    for side in ("human", "ai"):
        assert 0 <= summary[side]["after"]["profanity_rate"]["mean"] <= 1
        assert f"| {side} |" in report
    ai = [json.loads(x) for x in (tmp_path / "ai" / "data" / "comparisons.jsonl").read_text()
          .splitlines()]
    assert all(x["annotator_id"].startswith("ai:constitution:") and x["probability"] >= 0.5
               for x in ai)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[principles]]\nid = "x"\nquestion = ""\n')
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "rlaif.py"),
                        "--config.quick=true", f"--config.run_dir={tmp_path / 'b'}",
                        f"--config.constitution={bad}"], capture_output=True, text=True)
    assert r.returncode == 2 and "principle 1 ('x'): field 'question'" in r.stderr
