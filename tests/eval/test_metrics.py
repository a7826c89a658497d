"""Alignment metrics: distinct-n and its bootstrap, win rate against the reference, the profanity
classifier, and every report that shows them."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import eval as rl_eval
from rlhf_jax.eval import metrics, scorers
from rlhf_jax.eval.report import write_report
from rlhf_jax.models import DecoderModel, init_params, preset
from rlhf_jax.sampling import SamplingConfig

TEXTS = ["the cat sat on the mat", "the cat sat", "a dog", "dog", "", "the mat the mat"]


def _distinct(texts, n):
    """Distinct-n written out independently: the distinct n-grams of all texts over the total
    number of tokens (words), as Li et al. 2016 define it."""
    grams, tokens = set(), 0
    for t in texts:
        w = t.split()
        tokens += len(w)
        grams |= {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}
    return len(grams) / tokens if tokens else float("nan")


def test_distinct_n_by_hand():
    # unigrams: 6 + 3 + 2 + 1 + 0 + 4 = 16; distinct: the cat sat on mat a dog = 7
    assert metrics.distinct_n(TEXTS, 1) == pytest.approx(7 / 16)
    # bigrams, distinct: the cat, cat sat, sat on, on the, the mat, a dog, mat the = 7 ("the
    # cat", "cat sat", "the mat" repeat across responses, "the mat" within one too), over the
    # 16 tokens (Li et al. scale by tokens for every n, not by the 11 bigrams)
    assert metrics.distinct_n(TEXTS, 2) == pytest.approx(7 / 16)
    for n in (1, 2, 3):
        assert metrics.distinct_n(TEXTS, n) == pytest.approx(_distinct(TEXTS, n))
    assert metrics.distinct_n(["same words", "same words"], 2) == 0.25
    assert metrics.distinct_n(["one", "two"], 2) == 0.0  # words, but no bigram
    assert np.isnan(metrics.distinct_n(["", " "], 1))  # no words at all
    with pytest.raises(ValueError, match="n=0"):
        metrics.distinct_n(TEXTS, 0)


@pytest.mark.parametrize("n", [1, 2])
def test_distinct_n_bootstrap_matches_a_plain_loop(n, monkeypatch):
    rng = np.random.default_rng(5)
    words = [f"w{i}" for i in range(12)]
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 7))) for _ in range(40)] + TEXTS
    draws = np.random.default_rng(3).integers(0, len(texts), (50, len(texts)))
    reps = np.array([_distinct([texts[i] for i in row], n) for row in draws])
    want = reps[np.isfinite(reps)].std(ddof=1)
    got = metrics.distinct_n_bootstrap(texts, n, resamples=50, seed=3)
    assert got["mean"] == pytest.approx(_distinct(texts, n))
    assert got["stderr"] == pytest.approx(want, rel=1e-12)
    monkeypatch.setattr(metrics, "_BLOCK_CELLS", 7)  # many small blocks: the same answer
    assert metrics.distinct_n_bootstrap(texts, n, resamples=50, seed=3) == got


def test_distinct_n_bootstrap_edges():
    assert metrics.distinct_n_bootstrap(["a b c"], 1) == {"mean": 1.0, "stderr": 0.0}
    empty = metrics.distinct_n_bootstrap([], 1)
    assert np.isnan(empty["mean"]) and np.isnan(empty["stderr"])
    assert metrics.distinct_n_bootstrap(["a", "b"], 2) == {"mean": 0.0, "stderr": 0.0}
    with pytest.raises(ValueError, match="resamples=1"):
        metrics.distinct_n_bootstrap(TEXTS, 1, resamples=1)
    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{k}" for k in rng.integers(0, 300, 10)) for _ in range(2000)]
    out = metrics.distinct_n_bootstrap(texts, 2)  # 200 resamples of 2000 responses
    # with 18000 bigrams from 300² possible, the ratio's bootstrap error is small but positive
    assert 0 < out["stderr"] < 0.01


def _rows(golds, prompts=None):
    prompts = prompts or [f"p{i}" for i in range(len(golds))]
    return [{"prompt": p, "response": "r", "gold": g} for p, g in zip(prompts, golds)]


def test_win_rate_counts_ties_half():
    gold = [0.9, 0.1, 0.5, 0.5, 2.0, -1.0, 0.3]
    ref = [0.1, 0.9, 0.5, 0.4, 2.0, -2.0, 0.3]
    wins = np.array([1, 0, 0.5, 1, 0.5, 1, 0.5])
    got = metrics.win_rate(_rows(gold), _rows(ref))
    assert got["mean"] == pytest.approx(wins.mean())
    assert got["stderr"] == pytest.approx(wins.std(ddof=1) / np.sqrt(len(wins)))
    same = metrics.win_rate(_rows(gold), _rows(gold))
    assert same == {"mean": 0.5, "stderr": 0.0}
    nan = metrics.win_rate(_rows([float("nan"), 1.0]), _rows([0.0, 0.0]))
    assert np.isnan(nan["mean"]) and np.isnan(nan["stderr"])


def test_win_rate_refuses_unpaired_rows():
    with pytest.raises(ValueError, match=r"row 2 answers prompt 'x'.*reference row 2 answers "
                                         r"'p2'"):
        metrics.win_rate(_rows([1, 2, 3, 4], ["p0", "p1", "x", "y"]), _rows([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="3 rows against 2 reference rows"):
        metrics.win_rate(_rows([1, 2, 3]), _rows([1, 2]))


def test_profanity_is_the_packaged_classifier_batched(monkeypatch):
    import profanity_check

    texts = ["have a lovely day", "you are a shit", "damn this fucking thing", "", "hello"]
    want = profanity_check.predict_prob(texts)
    assert np.array_equal(scorers.profanity_probabilities(texts), want)
    assert scorers.profanity_rate(texts) == np.mean(want > 0.5)
    assert 0 < scorers.profanity_rate(texts) < 1  # the texts hold both kinds
    assert scorers.profanity_probability("p", texts[1]) == pytest.approx(want[1])
    assert scorers.profanity_probabilities([]).shape == (0,)
    assert np.isnan(scorers.profanity_rate([]))
    calls = []
    monkeypatch.setattr(profanity_check, "predict_prob",
                        lambda t: calls.append(len(t)) or want[:len(t)])
    scorers.profanity_probabilities(texts)
    assert calls == [len(texts)]  # one call for the batch


def test_rlaif_still_exports_the_profanity_scorers():
    from rlhf_jax import rlaif
    from rlhf_jax.rlaif import judges

    assert rlaif.profanity_probability is scorers.profanity_probability
    assert judges.profanity_rate is scorers.profanity_rate
    j = judges.ClassifierJudge("no_profanity").compare(["p"], ["a lovely day"], ["shit shit"])
    assert j.prob_a[0] > 0.99


class _WordTok:
    """Decodes ids as words, one of them profane."""

    WORDS = ["lovely", "shit", "day", "sun", "good", "the", "walk", "nice", "a", "tree", "blue",
             "sky", "and", "river", "song", "cake"]

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(self.WORDS[int(i) % len(self.WORDS)] for i in ids)


@pytest.fixture(scope="module")
def tiny():
    cfg = preset("tiny-gpt2", vocab_size=32, hidden_size=32, num_heads=4)
    return cfg, init_params(DecoderModel(cfg), jax.random.key(0))


def test_evaluate_policy_rows_and_summary_metrics(tiny, monkeypatch):
    import profanity_check

    cfg, params = tiny
    prompts = {"tokens": jnp.arange(24).reshape(8, 3) % 32, "mask": jnp.ones((8, 3), jnp.int32)}
    calls, real = [], profanity_check.predict_prob
    monkeypatch.setattr(profanity_check, "predict_prob",
                        lambda t: calls.append(len(t)) or real(t))
    out = rl_eval.evaluate_policy(params, params, cfg, prompts, jax.random.key(4),
                                  sampling=SamplingConfig(max_new_tokens=6), tokenizer=_WordTok(),
                                  gold_fn=lambda p, r: float(r.count("good")))
    assert calls == [8]  # the profanity classifier ran once over all responses
    rows, s = out["rows"], out["summary"]
    texts = [r["response"] for r in rows]
    probs = real(texts)
    flags = (probs > 0.5).astype(float)
    assert 0 < flags.sum() < 8  # the random policy says both kinds of thing
    for r, p in zip(rows, probs):
        assert r["profanity"] == pytest.approx(p) and r["profane"] == int(p > 0.5)
    assert s["profanity_rate"]["mean"] == pytest.approx(flags.mean())
    assert s["profanity_rate"]["stderr"] == pytest.approx(flags.std(ddof=1) / np.sqrt(8))
    for n in (1, 2):
        assert s[f"distinct_{n}"] == metrics.distinct_n_bootstrap(texts, n)
        assert s[f"distinct_{n}"]["mean"] == pytest.approx(_distinct(texts, n))
    for key in ("gold", "proxy", "kl", "length"):
        assert set(s[key]) == {"mean", "stderr"}
    json.dumps(out)  # eval.json stores it as is


def test_best_of_n_rows_pair_with_the_reference_rows(tiny):
    cfg, params = tiny
    prompts = {"tokens": jnp.arange(15).reshape(5, 3) + 1, "mask": jnp.ones((5, 3), jnp.int32)}
    kw = dict(sampling=SamplingConfig(max_new_tokens=4), tokenizer=_WordTok(),
              gold_fn=lambda p, r: float(r.count("good") - r.count("shit")),
              proxy_fn=lambda p, pt, pm, rt, rm: rt[:, 0].astype(jnp.float32), proxy_params=None)
    before = rl_eval.evaluate_policy(params, params, cfg, prompts, jax.random.key(1), **kw)
    # chunks of 4 rows split the 3 samples of a prompt: the pairing must survive that
    bon = rl_eval.evaluate_best_of_n(params, cfg, prompts, jax.random.key(1), n=3, chunk=4, **kw)
    assert [r["prompt"] for r in bon["rows"]] == [r["prompt"] for r in before["rows"]]
    assert len({r["prompt"] for r in before["rows"]}) == 5  # five different prompts
    wr = rl_eval.win_rate(bon["rows"], before["rows"])
    wins = [1.0 if a["gold"] > b["gold"] else 0.5 if a["gold"] == b["gold"] else 0.0
            for a, b in zip(bon["rows"], before["rows"])]
    assert wr["mean"] == pytest.approx(np.mean(wins))
    assert {"profanity_rate", "distinct_1", "distinct_2"} <= set(bon["summary"])


def test_constrained_best_of_n_never_buys_a_candidate_past_the_limit(tiny):
    """Each prompt's choice is the proxy's best among candidates whose cost is within the
    limit, or its least costly candidate when none is; recomputed here from every candidate
    (one chunk: the same random numbers as `evaluate_policy` on the repeated prompts)."""
    cfg, params = tiny
    prompts = {"tokens": jnp.arange(18).reshape(6, 3) + 1, "mask": jnp.ones((6, 3), jnp.int32)}
    cost = lambda pt, pm, rt, rm: (rt[:, 1] % 7).astype(np.float32)  # noqa: E731
    kw = dict(sampling=SamplingConfig(max_new_tokens=4), tokenizer=_WordTok(),
              proxy_fn=lambda p, pt, pm, rt, rm: rt[:, 0].astype(jnp.float32), proxy_params=None)
    n, limit = 4, 2.0
    rep = {k: jnp.repeat(v, n, axis=0) for k, v in prompts.items()}
    every = rl_eval.evaluate_policy(params, params, cfg, rep, jax.random.fold_in(
        jax.random.key(3), 0), cost_fn=cost, **kw)["rows"]
    out = rl_eval.evaluate_best_of_n(params, cfg, prompts, jax.random.key(3), n=n, chunk=64,
                                     cost_fn=cost, cost_limit=limit, **kw)
    expected, none_ok = [], 0
    for i in range(0, len(every), n):
        group = every[i:i + n]
        ok = [r for r in group if r["cost"] <= limit]
        none_ok += not ok
        expected.append(max(ok, key=lambda r: r["proxy"]) if ok
                        else min(group, key=lambda r: r["cost"]))
    assert [r["response"] for r in out["rows"]] == [r["response"] for r in expected]
    assert [r["cost"] for r in out["rows"]] == [r["cost"] for r in expected]
    s = out["summary"]
    assert s["over_limit"] == pytest.approx(none_ok / 6) and s["limit"] == limit
    assert s["cost"]["mean"] == pytest.approx(np.mean([r["cost"] for r in expected]))
    # the unconstrained choice differs somewhere: the constraint did something here
    free = rl_eval.evaluate_best_of_n(params, cfg, prompts, jax.random.key(3), n=n, chunk=64,
                                      **kw)
    assert [r["response"] for r in free["rows"]] != [r["response"] for r in out["rows"]]
    assert "cost" not in free["summary"]


def _summary(m: float, win: bool) -> dict:
    s = {"gold": {"mean": m, "stderr": 0.011}, "proxy": {"mean": m + 1, "stderr": 0.12},
         "kl": {"mean": m + 2, "stderr": 0.13}, "length": {"mean": 5.25, "stderr": 0.375},
         "profanity_rate": {"mean": m / 10, "stderr": 0.014},
         "distinct_1": {"mean": 0.5 + m / 10, "stderr": 0.015},
         "distinct_2": {"mean": 0.6 + m / 10, "stderr": 0.016},
         "eos_fraction": 1.0, "samples": 2}
    if win:
        s["win_rate"] = {"mean": 0.625, "stderr": 0.017}
    return s


def _best_of_n_report(tmp_path, ev) -> str:
    return write_report(
        tmp_path / "r.md", tmp_path / "p", info={
            "seed": 0, "stage_seconds": {"dpo": 1.0}, "preference_file": "mine.jsonl",
            "method": "best_of_n", "best_of_n": 4},
        reward_rows=[{"step": 1, "reward/accuracy": 0.6}, {"step": 1, "eval/accuracy": 0.6}],
        reward_summary={"eval/accuracy": 0.6, "eval/pairs": 80, "eval/loss": 0.7,
                        "eval/ece": 0.1}, policy_rows=[], evaluation=ev).read_text()


def test_report_shows_every_metric_with_its_standard_error(tmp_path):
    sample = [{"prompt": "p", "response": "r", "gold": 0.5, "proxy": 1.0}]
    ev = {"before": {"summary": _summary(0.25, False), "rows": sample},
          "after": {"summary": _summary(0.75, True), "rows": sample}}
    text = _best_of_n_report(tmp_path, ev)
    after = ("| after best-of-n | 0.750 ± 0.011 | 1.750 ± 0.120 | 2.750 ± 0.130 | — | "
             "0.625 ± 0.017 |")  # best-of-n's KL is analytic: no k3
    before = "| before (SFT) | 0.250 ± 0.011 | 1.250 ± 0.120 | 2.250 ± 0.130 | — | — |"
    assert ("| policy | gold | proxy (reward model) | KL, k1 | KL, k3 (≥ 0) | win rate vs "
            "reference (gold) |\n" in text and after in text and before in text)
    assert ("| policy | profanity rate | distinct-1 | distinct-2 | length |\n" in text)
    assert ("| after best-of-n | 0.075 ± 0.014 | 0.575 ± 0.015 | 0.675 ± 0.016 | 5.2 ± 0.4 |"
            in text)
    assert "| before (SFT) | 0.025 ± 0.014 | 0.525 ± 0.015 | 0.625 ± 0.016 | 5.2 ± 0.4 |" in text
    assert "ends with EOS" not in text  # the same fraction before and after
    assert "Li et al. 2016" in text and "200 resamples, seed 0" in text
    ev["after"]["summary"]["eos_fraction"] = 0.5
    text = _best_of_n_report(tmp_path, ev)
    assert "| distinct-2 | length | ends with EOS |\n" in text and "| 5.2 ± 0.4 | 0.50 |" in text


def _entry(method, value, seed, m, win=True):
    e = {"method": method, "key": "ppo.kl.beta", "value": value, "seed": seed,
         "train_seconds": 1.0, "eval_seconds": 0.5}
    for w, x in (("before", 0.0), ("after", m)):
        s = _summary(x, False)
        e.update({f"{w}_{q}": s[q] for q in ("gold", "proxy", "kl", "profanity_rate",
                                             "distinct_1", "distinct_2", "length")})
    if win:
        e["after_win_rate"] = {"mean": 0.5 + m / 10, "stderr": 0.02}
    return e


def test_comparison_report_has_the_alignment_metrics(tmp_path):
    from rlhf_jax.studies.compare_report import write_comparison_report
    from rlhf_jax.studies.compare_setup import CompareConfig

    one = CompareConfig(run_dir=str(tmp_path / "one"), seeds="0", methods="ppo,dpo")
    text = write_comparison_report(one, [_entry("ppo", 0.1, 0, 0.5), _entry("dpo", 0.5, 0, 1.0,
                                                                             win=False)],
                                   {("ppo", 0): 1.0, ("dpo", 0): 1.0}, 10.0).read_text()
    assert "## Alignment metrics" in text
    # one seed: the evaluation's own standard errors
    assert ("| PPO | beta = 0.1 | 0.550 ± 0.020 | 0.050 ± 0.014 | 0.550 ± 0.015 | "
            "0.650 ± 0.016 | 5.2 ± 0.4 |") in text
    assert "| starting policy (SFT) | — | — | 0.000 ± 0.014 | 0.500 ± 0.015 |" in text
    assert "| DPO | beta = 0.5 | — | 0.100 ± 0.014 |" in text  # a result without a win rate
    two = CompareConfig(run_dir=str(tmp_path / "two"), seeds="0,1", methods="ppo")
    text = write_comparison_report(two, [_entry("ppo", 0.1, 0, 0.5), _entry("ppo", 0.1, 1, 1.0)],
                                   {("ppo", 0): 1.0, ("ppo", 1): 1.0}, 10.0).read_text()
    win = np.array([0.55, 0.6])  # two seeds: the standard error between them
    assert (f"| PPO | beta = 0.1 | {win.mean():.3f} ± {win.std(ddof=1) / np.sqrt(2):.3f} |"
            in text)
    rows = json.loads((tmp_path / "two" / "results.json").read_text())["rows"]
    assert rows[0]["win_rate"][0] == pytest.approx(win.mean())


def test_rlaif_report_has_the_alignment_metrics(tmp_path):
    from rlhf_jax.studies.rlaif import RLAIFConfig, write_rlaif_report

    def side(m):
        info = {"gold_label_agreement": 0.8, "comparisons": 10, "ai_human_agreement": 0.7,
                "ai_labels_by_principle": {"ai:constitution:positive": 10}}
        return {"info": info, "reward_accuracy": 0.75,
                "before": {**{k: v for k, v in _summary(0.0, False).items()
                              if isinstance(v, dict)}, "samples": 2},
                "after": {**{k: v for k, v in _summary(m, True).items()
                             if isinstance(v, dict)}, "samples": 2}}

    cfg = RLAIFConfig(run_dir=str(tmp_path))
    text = write_rlaif_report(cfg, {"human": side(0.5), "ai": side(1.0)}).read_text()
    assert "| human | 0.750 | 0.000 ± 0.011 | 0.500 ± 0.011 | 2.500 ± 0.130 | — | " \
           "0.000 ± 0.014 | 0.050 ± 0.014 |" in text
    assert ("| ai | after | 2.000 ± 0.120 | 0.625 ± 0.017 | 0.600 ± 0.015 | 0.700 ± 0.016 | "
            "5.2 ± 0.4 |") in text
    assert "| ai | before | 1.000 ± 0.120 | — |" in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ai"]["after"]["profanity_rate"] == {"mean": 0.1, "stderr": 0.014}
