"""Statistical checks of the sampling distribution against float64 references (chi-square)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rlhf_jax.sampling import filter_logits, sample_token, top_k_filter, top_p_filter

LOGITS = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
N_DRAWS = 40_000


def reference(logits, temperature=1.0, top_k=0, top_p=1.0):
    """Target distribution in float64, written independently of the implementation."""
    z = np.asarray(logits, np.float64) / temperature
    keep = np.ones_like(z, bool)
    if top_k:
        keep &= z >= np.sort(z)[::-1][top_k - 1]
    p = np.exp(z - z.max()) * keep
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        before = 0.0
        nucleus = np.zeros_like(keep)
        for i in order:  # add tokens while the mass before them is below top_p
            if before < top_p or not nucleus.any():
                nucleus[i] = True
            before += p[i]
        p = p * nucleus
        p /= p.sum()
    return p


def draw(**kw):
    keys = jax.random.split(jax.random.key(123), N_DRAWS // 1000)
    logits = jnp.broadcast_to(jnp.asarray(LOGITS, jnp.float32), (1000, LOGITS.size))
    tokens = jax.jit(jax.vmap(lambda k: sample_token(k, logits, **kw)[0]))(keys)
    return np.bincount(np.asarray(tokens).ravel(), minlength=LOGITS.size)


def chi2_pvalue(counts, probs):
    support = probs > 0
    assert counts[~support].sum() == 0, "a filtered-out token was sampled"
    expected = probs[support] * counts.sum()
    return stats.chisquare(counts[support], expected).pvalue


@pytest.mark.parametrize("kw", [
    dict(temperature=1.0), dict(temperature=0.5), dict(temperature=2.0),
    dict(top_k=3), dict(top_p=0.8), dict(temperature=0.7, top_k=5, top_p=0.9),
])
def test_sampling_matches_target_distribution(kw):
    counts = draw(**kw)
    assert chi2_pvalue(counts, reference(LOGITS, **kw)) > 1e-3
    # power check: the same draws reject the plain T=1 distribution (a wrong implementation)
    if kw != dict(temperature=1.0):
        assert stats.chisquare(counts, reference(LOGITS) * counts.sum()).pvalue < 1e-6


def test_filters_by_hand():
    x = jnp.array([[1.0, 3.0, 2.0, 3.0, 0.0]])
    assert np.isinf(np.asarray(top_k_filter(x, 2))).tolist() == [[True, False, True, False, True]]
    p = np.exp([1.0, 3.0, 2.0, 3.0, 0.0]) / np.exp([1.0, 3.0, 2.0, 3.0, 0.0]).sum()
    # the two 3.0 tokens hold 2·p[1]; top_p just below that keeps both (ties kept), above adds 2.0
    kept = ~np.isinf(np.asarray(top_p_filter(x, float(2 * p[1]) - 1e-3)))
    assert kept.tolist() == [[False, True, False, True, False]]
    kept = ~np.isinf(np.asarray(top_p_filter(x, float(2 * p[1]) + 1e-3)))
    assert kept.tolist() == [[False, True, True, True, False]]
    assert np.isfinite(np.asarray(top_p_filter(x, 1e-6))).sum() == 2  # at least the top token(s)
    np.testing.assert_allclose(filter_logits(x, temperature=2.0), x / 2)


def test_greedy_and_logprob_at_temperature():
    logits = jnp.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    tok, lp = sample_token(jax.random.key(0), logits, temperature=0.5, greedy=True)
    assert tok.tolist() == [1, 0]
    ref = jax.nn.log_softmax(logits / 0.5)
    np.testing.assert_allclose(lp, [ref[0, 1], ref[1, 0]], atol=1e-6)
    # with truncation the reported log-prob is still over the full tempered distribution
    tok, lp = sample_token(jax.random.key(1), logits, temperature=0.5, top_k=1)
    assert tok.tolist() == [1, 0]
    np.testing.assert_allclose(lp, [ref[0, 1], ref[1, 0]], atol=1e-6)
