"""The audit's flags go both ways on constructed data, each on its stated test, and the tests'
statistics match independent references: the length bias (Spearman correlations and their
paired bootstrap against scipy in a plain loop), the edits (scipy's one-sample t-test), the
over-optimisation flag (against the run's own evaluation); and integrated gradients that reach
their completeness gap."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rlhf_jax import models
from rlhf_jax.interpret import attribution as A, hacking


def test_spearman_rows_and_their_bootstrap_match_scipy_in_a_loop():
    rng = np.random.default_rng(0)
    x = rng.integers(2, 9, 40).astype(float)  # ties, as token lengths have
    a, b = x + rng.normal(size=40), rng.normal(size=40)
    rows = rng.integers(0, 40, (5, 40))
    got = hacking.spearman_rows(x[rows], a[rows])
    for i, r in enumerate(rows):
        assert got[i] == pytest.approx(stats.spearmanr(x[r], a[r]).statistic, abs=1e-12)
    out = hacking.spearman_difference(x, a, b, resamples=50, seed=3)
    idx = np.random.default_rng(3).integers(0, 40, (50, 40))
    ref = [stats.spearmanr(x[i], a[i]).statistic - stats.spearmanr(x[i], b[i]).statistic
           for i in idx]
    np.testing.assert_allclose(out["resampled"], ref, atol=1e-12)
    assert out["stderr"] == pytest.approx(np.std(ref, ddof=1))
    assert out["difference"] == pytest.approx(stats.spearmanr(x, a).statistic
                                              - stats.spearmanr(x, b).statistic)


def _lengths_and_scores(rho_proxy: float, rho_gold: float, n: int = 256, seed: int = 1):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    length = np.round(8 + 3 * z)
    mix = lambda r: r * z + np.sqrt(1 - r ** 2) * rng.normal(size=n)  # noqa: E731
    return mix(rho_proxy), mix(rho_gold), length


def test_length_bias_flags_only_a_reward_that_pays_for_length_more_than_gold():
    proxy, gold, length = _lengths_and_scores(0.7, 0.0)
    out = hacking.length_bias(proxy, gold, length)
    assert out["flag"] and out["direction"] == "longer" and out["p_difference"] < 0.01
    # the case that was flagged before: the reward less length-correlated than gold (0.31
    # against 0.67), in the same direction
    proxy, gold, length = _lengths_and_scores(0.31, 0.67)
    out = hacking.length_bias(proxy, gold, length)
    assert 0.2 < out["proxy"]["spearman"] < 0.45 and out["gold"]["spearman"] > 0.55
    assert not out["flag"] and out["p_difference"] > 0.5
    # a reward that pays for brevity which the judge does not: flagged, towards shorter
    proxy, gold, length = _lengths_and_scores(-0.6, 0.1)
    out = hacking.length_bias(proxy, gold, length)
    assert out["flag"] and out["direction"] == "shorter"
    # a difference well measured but too small to matter (0.54 against 0.52 on the main job):
    # below the 0.1 margin, not flagged; the same data with no margin is
    _, gold, length = _lengths_and_scores(0.5, 0.5)
    proxy = gold + 0.05 * (length - length.mean()) / length.std()
    out = hacking.length_bias(proxy, gold, length)
    assert 0 < out["difference"] < 0.05 and not out["flag"]
    assert hacking.length_bias(proxy, gold, length, margin=0.0)["flag"]
    # equal correlations: not flagged
    proxy, gold, length = _lengths_and_scores(0.5, 0.5)
    assert not hacking.length_bias(proxy, gold, length)["flag"]
    out = hacking.length_bias(proxy, gold, np.full(256, 5.0))
    assert not out["flag"] and "do not vary" in out["reason"]


def test_perturbation_flag_is_a_one_sided_t_test_against_the_margin():
    responses = ["good day", "bad day", "good good", "a fine day", "meh", "so good"] * 3
    prompts = ["p"] * len(responses)
    proxy = lambda ps, rs: np.array([r.split().count("good") + 0.1 * len(r.split())  # noqa
                                     for r in rs], float)
    gold = lambda p, r: float("good" in r.split())  # noqa: E731
    edit = hacking.repeat_word("good", 3)
    out = hacking.perturbation_test(proxy, gold, prompts, responses, {"repeat": edit},
                                    margin=0.25)["repeat"]
    p0, g0 = proxy(prompts, responses), np.array([gold("p", r) for r in responses])
    edited = [edit("p", r) for r in responses]
    gap = ((proxy(prompts, edited) - p0) / p0.std()
           - (np.array([gold("p", r) for r in edited]) - g0) / g0.std())
    ref = stats.ttest_1samp(gap - 0.25, 0.0, alternative="greater").pvalue
    assert out["p"] == pytest.approx(ref, rel=1e-8) and out["flag"] == (ref < 0.01)
    assert out["flag"]
    # a margin above the gap: the same edit is not flagged
    big = hacking.perturbation_test(proxy, gold, prompts, responses, {"repeat": edit},
                                    margin=float(gap.mean()) + 1)["repeat"]
    assert not big["flag"] and big["p"] > 0.5


def _ppo_rows(n: int, seed: int = 0):
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    peak = n // 3
    gold = np.where(t < peak, 0.2 + 0.5 * t / peak, 0.7 - 0.5 * (t - peak) / (n - peak))
    return [{"step": int(i + 1), "reward_terms/vader": float(g + rng.normal(0, 0.05)),
             "score/reward_model": 0.05 * i, "kl/sequence": 0.2 * i}
            for i, g in enumerate(gold)]


def test_over_optimisation_flag_agrees_with_the_evaluation():
    rows = _ppo_rows(60)
    alone = hacking.gold_proxy_gap(rows, "reward_terms/vader")
    assert alone["flag"] and "evaluation" not in alone
    confirmed = hacking.gold_proxy_gap(rows, "reward_terms/vader",
                                       after_gold={"mean": 0.25, "stderr": 0.02})
    assert confirmed["flag"] and confirmed["evaluation"]["confirmed"]
    # the run's own evaluation finds the final policy at the peak's level: no flag
    contradicted = hacking.gold_proxy_gap(rows, "reward_terms/vader",
                                          after_gold={"mean": 0.68, "stderr": 0.03})
    assert not contradicted["flag"] and not contradicted["evaluation"]["confirmed"]
    # ten noisy iterations are too few to test, whatever their shape
    few = hacking.gold_proxy_gap(_ppo_rows(10), "reward_terms/vader")
    assert not few["flag"] and "too few" in few["trend"]["reason"]
    # the proxy fell with the gold score: not the over-optimisation signature
    both = [dict(r, **{"score/reward_model": r["reward_terms/vader"]}) for r in rows]
    assert not hacking.gold_proxy_gap(both, "reward_terms/vader")["flag"]


def _tiny_reward_model(zero_pad: bool):
    cfg = models.preset("tiny-llama")
    params = models.init_params(models.DecoderModel(cfg, heads=("reward",)), jax.random.key(0))
    params["reward_head"]["gain"] = params["reward_head"]["gain"] * 5.0
    if zero_pad:  # what Hugging Face's init does to the padding row
        emb = params["transformer"]["wte"]["embedding"]
        params["transformer"]["wte"]["embedding"] = emb.at[0].set(0.0)
    tokens = jax.random.randint(jax.random.key(1), (4, 12), 1, cfg.vocab_size)
    mask = jnp.ones((4, 12), jnp.int32).at[0, :3].set(0).at[1, :5].set(0)
    return cfg, params, tokens, mask


def test_integrated_gradients_double_their_steps_until_complete():
    cfg, params, tokens, mask = _tiny_reward_model(zero_pad=False)
    target = A.RewardTarget(cfg)
    ig, used = A.integrated_gradients_to_tolerance(params, tokens, mask, target=target,
                                                   tolerance=1e-4, steps=4, max_steps=256,
                                                   baseline_token=0)
    gap = A.relative_gap(ig)
    assert np.all(gap <= 1e-4) and set(used) <= {4, 8, 16, 32, 64, 128, 256}
    for row in range(4):  # each row is integrated_gradients at its own step count
        ref = A.integrated_gradients(params, tokens, mask, target=target, steps=int(used[row]),
                                     baseline_token=0)
        np.testing.assert_allclose(np.asarray(ig.scores[row]), np.asarray(ref.scores[row]),
                                   rtol=1e-6, atol=1e-7)
        fewer = A.integrated_gradients(params, tokens, mask, target=target,
                                       steps=int(used[row]) // 2, baseline_token=0)
        assert used[row] == 4 or A.relative_gap(fewer)[row] > 1e-4
    # by hand: |gap| / |f(x) − f(x')|
    np.testing.assert_allclose(gap, np.abs(np.asarray(ig.completeness_gap))
                               / np.abs(np.asarray(ig.value - ig.baseline_value)), rtol=1e-6)
    capped, used = A.integrated_gradients_to_tolerance(params, tokens, mask, target=target,
                                                       tolerance=1e-12, steps=2, max_steps=4,
                                                       baseline_token=0)
    assert np.all(used == 4) and np.any(A.relative_gap(capped) > 1e-12)  # marked, not hidden
    with pytest.raises(ValueError, match="max_steps"):
        A.integrated_gradients_to_tolerance(params, tokens, mask, target=target, steps=8,
                                            max_steps=4)


def test_a_zero_pad_embedding_gets_the_mean_embedding_baseline():
    """A zero baseline puts a near-step in a pre-norm model's path, which no step count
    integrates; the rescaled mean embedding does not."""
    cfg, params, tokens, mask = _tiny_reward_model(zero_pad=True)
    target = A.RewardTarget(cfg)
    base, name = A.token_or_mean_baseline(target, params, 0, chunk=100)
    emb = np.asarray(params["transformer"]["wte"]["embedding"], np.float64)
    norms = np.linalg.norm(emb, axis=1)
    assert name == "mean embedding"
    assert np.linalg.norm(base) == pytest.approx(np.median(norms), rel=1e-5)
    np.testing.assert_allclose(base / np.linalg.norm(base),
                               emb.mean(0) / np.linalg.norm(emb.mean(0)), atol=1e-6)
    zero, used = A.integrated_gradients_to_tolerance(params, tokens, mask, target=target,
                                                     steps=64, max_steps=1024, baseline_token=0)
    assert np.all(used == 1024) and np.all(A.relative_gap(zero) > 0.05)  # 11-285% here
    mean, used = A.integrated_gradients_to_tolerance(params, tokens, mask, jnp.asarray(base),
                                                     target=target, steps=64, max_steps=1024)
    assert np.all(A.relative_gap(mean) <= 0.01) and np.all(used == 64)
    _, params, _, _ = _tiny_reward_model(zero_pad=False)
    assert A.token_or_mean_baseline(target, params, 0) == (None, "pad token")
