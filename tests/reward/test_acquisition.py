"""Acquisition functions on constructed inputs whose right answer is known, and against float64
formulas written out independently."""
import jax
import numpy as np
import pytest

from rlhf_jax.reward import acquisition as acq


def _h(p):
    p = np.clip(p, 1e-300, 1.0)
    q = np.clip(1 - p, 1e-300, 1.0)
    return -(p * np.log(p) + q * np.log(q))


# pair 0: all members confident, agreeing; 1: all members unsure (Δ ≈ 0);
# 2: members confident but disagreeing; 3: mildly spread around a confident mean
DELTA = np.array([[6.0, 6.5, 5.5, 6.0],
                  [0.1, -0.1, 0.05, -0.05],
                  [6.0, -6.0, 6.0, -6.0],
                  [2.0, 3.0, 2.5, 3.5]], np.float32)


def test_each_function_picks_the_pair_it_should():
    ent = np.asarray(acq.predictive_entropy(DELTA))
    dis = np.asarray(acq.disagreement(DELTA))
    mi = np.asarray(acq.bald(DELTA))
    # entropy cannot tell "unsure" from "disagreeing": both predict ~50/50
    assert ent[1] == pytest.approx(np.log(2), abs=1e-3) and ent[2] == pytest.approx(np.log(2),
                                                                                    abs=1e-3)
    assert ent[0] < ent[3] < ent[1]
    # BALD prefers the disagreement the model could learn from over the coin flip
    assert np.argmax(mi) == 2 and mi[1] < 1e-3 and mi[0] < 1e-2
    assert np.argmax(dis) == 2 and dis[1] < dis[3] < dis[2]


def test_against_float64_formulas():
    rng = np.random.default_rng(0)
    d = rng.normal(0, 3, (200, 5))
    p = 1 / (1 + np.exp(-d))
    # float32 evaluation of O(1) quantities: 1e-5 absolute is ~100 ulps of headroom
    np.testing.assert_allclose(acq.predictive_entropy(d.astype(np.float32)), _h(p.mean(1)),
                               atol=1e-5)
    np.testing.assert_allclose(acq.bald(d.astype(np.float32)),
                               _h(p.mean(1)) - _h(p).mean(1), atol=1e-5)
    np.testing.assert_allclose(acq.disagreement(d.astype(np.float32)), d.std(1), rtol=1e-5)
    assert (np.asarray(acq.bald(d.astype(np.float32))) >= -1e-6).all()  # Jensen
    s = acq.acquisition_scores("random", d, jax.random.key(0))
    assert s.shape == (200,) and 0 <= float(s.min()) and float(s.max()) < 1
    assert not np.array_equal(s, acq.acquisition_scores("random", d, jax.random.key(1)))
    np.testing.assert_allclose(acq.acquisition_scores("entropy", d[:, 0]),
                               _h(p[:, 0]), atol=1e-5)  # one model: [N] works
    with pytest.raises(ValueError, match="acquisition='x'"):
        acq.acquisition_scores("x", d)
    with pytest.raises(ValueError, match="needs a key"):
        acq.acquisition_scores("random", d)


def test_top_k_with_a_cap_per_prompt():
    scores = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0])
    groups = np.array([0, 0, 0, 1, 1, 2])
    assert list(acq.select_top_k(scores, 3)) == [0, 1, 2]
    got = acq.select_top_k(scores, 4, groups, num_groups=3, max_per_group=1)
    assert list(got) == [0, 3, 5, -1]  # one per prompt; only three prompts
    got = acq.select_top_k(scores, 4, groups, num_groups=3, max_per_group=2)
    assert list(got) == [0, 1, 3, 4]


def test_diverse_selection_skips_near_duplicates():
    # two tight clusters: the three best scores sit in cluster A, a slightly worse pair in B
    emb = np.array([[0, 0], [0.01, 0], [0, 0.01], [5, 5], [5.01, 5]], np.float32)
    scores = np.array([1.0, 0.99, 0.98, 0.9, 0.89], np.float32)
    assert sorted(np.asarray(acq.select_diverse(scores, emb, 2, weight=0.0))) == [0, 1]
    got = list(np.asarray(acq.select_diverse(scores, emb, 2, weight=1.0)))
    assert got[0] == 0 and got[1] in (3, 4)  # the second pick leaves cluster A
    got = np.asarray(acq.select_diverse(scores, emb, 5, weight=1.0))
    assert sorted(got) == [0, 1, 2, 3, 4]  # k = N takes everything once


def test_bootstrap_weights_are_poisson_and_stable():
    from rlhf_jax.reward.objective import bootstrap_weights

    idx = np.arange(20000)
    w0 = np.asarray(bootstrap_weights(idx, 0))
    w1 = np.asarray(bootstrap_weights(idx, 1))
    # Poisson(1): mean 1, variance 1, P(0) = e^-1; 20000 draws give s.e. ~0.007 on each
    assert abs(w0.mean() - 1) < 0.04 and abs(w0.var() - 1) < 0.06
    assert abs((w0 == 0).mean() - np.exp(-1)) < 0.02
    assert not np.array_equal(w0, w1)  # members resample differently
    # an example keeps its weight whatever batch it comes in
    np.testing.assert_array_equal(np.asarray(bootstrap_weights(idx[::-1][:100], 0)),
                                  w0[::-1][:100])
