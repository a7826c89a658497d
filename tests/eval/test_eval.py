"""Scorers, simulated annotators, policy evaluation and the report."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import data
from rlhf_jax.eval import evaluate_policy, repetition_fraction, vader_compound, word_count
from rlhf_jax.eval.report import write_report
from rlhf_jax.models import DecoderModel, init_params, preset
from rlhf_jax.sampling import SamplingConfig


def test_text_scorers():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    text = "the food was wonderful and very good"
    assert vader_compound("p", text) == SentimentIntensityAnalyzer().polarity_scores(text)[
        "compound"] > 0.5
    assert vader_compound("p", "awful and boring") < -0.3
    assert repetition_fraction("", "good good good bad") == pytest.approx(0.5)
    assert repetition_fraction("", "") == 0.0 and word_count("", "a b  c") == 3.0


def test_simulated_annotators_follow_bradley_terry():
    gold = {"x": 1.0, "y": 0.0}
    pairs = [("p", "x", "y")] * 4000
    recs = data.builtin.simulate_annotators(pairs, lambda p, r: gold[r],
                                            temperatures=(0.25, 1.0, 4.0), seed=3)
    for who, temp in enumerate((0.25, 1.0, 4.0)):
        mine = [r for r in recs if r["annotator_id"] == f"annotator_{who}"]
        frac = np.mean([r["chosen"] == "x" for r in mine])
        want = 1 / (1 + np.exp(-1.0 / temp))
        se = np.sqrt(want * (1 - want) / len(mine))
        assert abs(frac - want) < 4 * se, (who, frac, want)


def test_evaluate_policy_gold_proxy_and_kl():
    cfg = preset("tiny-gpt2", vocab_size=32, hidden_size=32, num_heads=4)
    params = init_params(DecoderModel(cfg), jax.random.key(0))
    other = init_params(DecoderModel(cfg), jax.random.key(1))

    class Tok:  # decodes ids as letters
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(chr(97 + int(i) % 26) for i in ids)

    prompts = {"tokens": jnp.array([[3, 4, 5]] * 6), "mask": jnp.ones((6, 3), jnp.int32)}
    proxy = lambda p, pt, pm, rt, rm: rm.sum(1) * 0.5  # noqa: E731
    kw = dict(sampling=SamplingConfig(max_new_tokens=5), tokenizer=Tok(),
              gold_fn=lambda p, r: float(r.count("a")), proxy_fn=proxy)
    same = evaluate_policy(params, params, cfg, prompts, jax.random.key(2), **kw)
    assert same["summary"]["kl"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert same["summary"]["samples"] == 6
    for row in same["rows"]:
        assert row["gold"] == row["response"].count("a") and row["proxy"] == 2.5
    diff = evaluate_policy(params, other, cfg, prompts, jax.random.key(2), **kw)
    # the same key draws the same responses from the same policy; only the reference differs
    assert [r["response"] for r in diff["rows"]] == [r["response"] for r in same["rows"]]
    assert diff["summary"]["kl"]["mean"] != pytest.approx(0.0, abs=1e-3)


def test_report_from_run_data(tmp_path):
    rows = [{"step": s, "reward/accuracy": 0.5 + s / 100} for s in range(1, 21)]
    rows += [{"step": 10, "eval/accuracy": 0.61}, {"step": 20, "eval/accuracy": 0.73}]
    summary = {"eval/accuracy": 0.734, "eval/pairs": 50, "eval/loss": 0.5, "eval/ece": 0.05,
               "eval/accuracy_annotator/annotator_0": 0.9}
    ppo_rows = [{"step": s, "kl/sequence": s * 0.1, "score/reward_model": s * 0.2,
                 "reward_terms/vader": s * 0.01} for s in range(1, 11)]
    summ = lambda m: {"gold": {"mean": m, "stderr": 0.01}, "proxy": {"mean": m, "stderr": 0.1},  # noqa: E731
                      "kl": {"mean": m, "stderr": 0.1}, "length": {"mean": 5.0, "stderr": 0},
                      "eos_fraction": 1.0, "samples": 2}
    sample = [{"prompt": "p", "response": "a|b", "gold": 0.5, "proxy": 1.0}]
    ev = {"before": {"summary": summ(0.125), "rows": sample},
          "after": {"summary": summ(0.875), "rows": sample}}
    info = {"seed": 0, "stage_seconds": {"sft": 1.0}, "comparisons": 100, "gold": "vader",
            "annotator_temperatures": "1", "gold_label_agreement": 0.8}
    path = write_report(tmp_path / "report.md", tmp_path / "figures", info=info,
                        reward_rows=rows, reward_summary=summary, policy_rows=ppo_rows,
                        evaluation=ev)
    text = path.read_text()
    assert "Held-out accuracy **0.734**" in text and "+0.750" in text
    assert "| before (SFT) | 0.125 ± 0.010" in text and "a\\|b" in text
    # metrics the summaries lack show as —; the EOS fraction is the same before and after:
    # its column is left out
    assert ("| policy | gold | proxy (reward model) | KL, k1 | KL, k3 (≥ 0) | win rate vs "
            "reference (gold) |\n") in text
    assert "| before (SFT) | 0.125 ± 0.010 | 0.125 ± 0.100 | 0.125 ± 0.100 | — | — |" in text
    assert "| before (SFT) | — | — | — | 5.0 ± 0.0 |" in text and "ends with EOS" not in text
    assert "Per annotator: annotator_0 0.900." in text and "rough figure" not in text
    assert "![reward accuracy](figures/reward_accuracy.png)" in text
    assert (tmp_path / "figures" / "reward_accuracy.png").stat().st_size > 1000
    assert (tmp_path / "figures" / "gold_proxy_vs_kl.png").stat().st_size > 1000


def test_report_without_annotators_on_few_pairs(tmp_path):
    summ = {"gold": {"mean": 0.1, "stderr": 0.01}, "proxy": {"mean": 0.2, "stderr": 0.1},
            "kl": {"mean": 0.0, "stderr": 0.0}, "length": {"mean": 4.0, "stderr": 0},
            "eos_fraction": 0.5, "samples": 2}
    after = dict(summ, length={"mean": 6.0, "stderr": 0})
    sample = [{"prompt": "p", "response": "", "gold": 0.5, "proxy": 1.0}]
    text = write_report(
        tmp_path / "r.md", tmp_path / "p", info={
            "seed": 1, "stage_seconds": {"ppo": 2.0}, "preference_file": "mine.jsonl",
            "before_label": "before (initial policy)"},
        reward_rows=[{"step": 1, "reward/accuracy": 0.6}, {"step": 1, "eval/accuracy": 0.6}],
        reward_summary={"eval/accuracy": 0.6, "eval/pairs": 20, "eval/loss": 0.7,
                        "eval/ece": 0.1},
        policy_rows=[{"step": s, "kl/sequence": 0.1 * s, "score/reward_model": 0.1,
                   "reward_terms/vader": 0.2} for s in range(1, 4)],
        evaluation={"before": {"summary": summ, "rows": sample},
                    "after": {"summary": after, "rows": sample}}).read_text()
    assert "Per annotator" not in text and "only 20 held-out pairs" in text
    assert "| before (initial policy) |" in text and "### before (initial policy)" in text
    assert "| length |" in text and "ends with EOS" not in text  # only length changed


@pytest.mark.parametrize("method", ["dpo", "best_of_n"])
def test_report_names_the_method_and_its_figure(tmp_path, method):
    summ = {"gold": {"mean": 0.1, "stderr": 0.01}, "proxy": {"mean": 0.2, "stderr": 0.1},
            "kl": {"mean": 0.5, "stderr": 0.1}, "length": {"mean": 4.0, "stderr": 0},
            "eos_fraction": 0.5, "samples": 2}
    sample = [{"prompt": "p", "response": "r", "gold": 0.5, "proxy": 1.0}]
    rows = [{"step": s, "train/loss": 0.7 - s / 100, "rewards/accuracy": 0.5 + s / 100}
            for s in range(1, 11)] + [{"step": 10, "eval/loss": 0.6,
                                       "eval/rewards/accuracy": 0.7}]
    text = write_report(
        tmp_path / "r.md", tmp_path / "p", info={
            "seed": 0, "stage_seconds": {method: 1.0}, "preference_file": "mine.jsonl",
            "method": method, "best_of_n": 4},
        reward_rows=[{"step": 1, "reward/accuracy": 0.6}, {"step": 1, "eval/accuracy": 0.6}],
        reward_summary={"eval/accuracy": 0.6, "eval/pairs": 80, "eval/loss": 0.7,
                        "eval/ece": 0.1},
        policy_rows=rows if method == "dpo" else [],
        evaluation={"before": {"summary": summ, "rows": sample},
                    "after": {"summary": summ, "rows": sample}}).read_text()
    name = {"dpo": "DPO", "best_of_n": "best-of-n"}[method]
    assert f"## Policy before and after {name}" in text and f"| after {name} |" in text
    assert ("![training](p/training.png)" in text) == (method == "dpo")
    assert ("Best-of-4: no training" in text) == (method == "best_of_n")
    assert (tmp_path / "p" / "training.png").exists() == (method == "dpo")
    assert "gold_proxy_vs_kl" not in text


def test_best_of_n_kl_is_the_analytic_value():
    from rlhf_jax.eval import best_of_n_kl

    # exact KL of best-of-n over M equally likely responses with distinct rewards: the k-th
    # worst is picked with probability (k/M)^n − ((k−1)/M)^n; as M grows it tends to the
    # continuous value log n − (n − 1)/n, with an O(n/M) gap
    m = 200_000
    k = np.arange(1, m + 1, dtype=np.float64)
    for n in (1, 2, 16):
        p = (k / m) ** n - ((k - 1) / m) ** n
        exact = float(np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-300) * m), 0.0)))
        assert best_of_n_kl(n) == pytest.approx(exact, abs=1e-3)
