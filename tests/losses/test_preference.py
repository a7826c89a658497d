"""Preference losses against float64 Python references and hand-computed cases."""
import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.data import normalise_rating
from rlhf_jax.losses import (bradley_terry_loss, centering_penalty, hybrid_loss_sum,
                             plackett_luce_loss, scalar_regression_loss)


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


@pytest.mark.parametrize("margin,eps", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.1), (0.3, 0.2)])
def test_bradley_terry_against_float64(margin, eps):
    rng = np.random.default_rng(0)
    rw, rl = rng.normal(size=6) * 3, rng.normal(size=6) * 3
    ours = bradley_terry_loss(jnp.asarray(rw, jnp.float32), jnp.asarray(rl, jnp.float32),
                              margin_b=margin, label_smoothing=eps)
    ref = [-(1 - eps) * _log_sigmoid(w - l - margin) - eps * _log_sigmoid(-(w - l - margin))
           for w, l in zip(rw, rl)]
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


def test_bradley_terry_by_hand_and_extremes():
    assert float(bradley_terry_loss(jnp.array([0.0]), jnp.array([0.0]))[0]) == pytest.approx(
        math.log(2))
    big = bradley_terry_loss(jnp.array([-100.0]), jnp.array([100.0]))  # no overflow
    assert float(big[0]) == pytest.approx(200.0, rel=1e-6)


def _pl_reference(r, ranks):
    """Breslow-tied Plackett–Luce log-likelihood by explicit enumeration, float64."""
    r, ranks = np.asarray(r, np.float64), np.asarray(ranks)
    worst = ranks.max()
    ll = 0.0
    for i in range(len(r)):
        if ranks[i] == worst:
            continue
        risk = [j for j in range(len(r)) if ranks[j] >= ranks[i]]
        ll += r[i] - math.log(sum(math.exp(r[j]) for j in risk))
    return -ll


def test_plackett_luce_no_ties_is_sequential_choice():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(3, 4))
    ranks = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 3, 2]])
    ours = plackett_luce_loss(jnp.asarray(r, jnp.float32), jnp.asarray(ranks))
    for b in range(3):
        order = np.argsort(ranks[b])
        seq = -sum(r[b, order[i]] - math.log(sum(math.exp(r[b, order[j]])
                                                  for j in range(i, 4))) for i in range(4))
        assert float(ours[b]) == pytest.approx(seq, rel=1e-5)
    # the probabilities of all 24 orderings sum to one
    total = sum(math.exp(-float(plackett_luce_loss(jnp.asarray(r[:1], jnp.float32),
                                                   jnp.asarray([perm]))[0]))
                for perm in itertools.permutations(range(4)))
    assert total == pytest.approx(1.0, rel=1e-5)


def test_plackett_luce_ties_padding_and_k2():
    r = np.array([[1.0, 0.2, -0.5, 3.0], [0.3, -1.0, 2.0, 0.0]])
    ranks = np.array([[0, 1, 1, 9], [0, 0, 1, 9]])  # ties; last response is padding
    valid = np.array([[1, 1, 1, 0], [1, 1, 1, 0]])
    ours = plackett_luce_loss(jnp.asarray(r, jnp.float32), jnp.asarray(ranks), jnp.asarray(valid))
    for b in range(2):
        assert float(ours[b]) == pytest.approx(_pl_reference(r[b, :3], ranks[b, :3]), rel=1e-5)
    # K = 2 equals Bradley–Terry
    rw, rl = np.array([0.7, -2.0]), np.array([0.1, 1.5])
    pl = plackett_luce_loss(jnp.asarray(np.stack([rw, rl], 1), jnp.float32),
                            jnp.array([[0, 1], [0, 1]]))
    np.testing.assert_allclose(pl, bradley_terry_loss(jnp.asarray(rw), jnp.asarray(rl)),
                               rtol=1e-6)


def test_scalar_hybrid_centering():
    y = normalise_rating(np.array([1.0, 4.0, 7.0]), 1.0, 7.0)
    np.testing.assert_allclose(y, [-1.0, 0.0, 1.0])
    np.testing.assert_allclose(scalar_regression_loss(jnp.array([0.5, 0.0]), jnp.array([1.0, 2.0])),
                               [0.25, 4.0])
    total, count = hybrid_loss_sum(jnp.array([1.0, 2.0, 9.0]), jnp.array([1.0, 1.0, 0.0]),
                                   jnp.array([4.0, 8.0, 3.0]), jnp.array([0.0, 1.0, 1.0]), 0.5)
    assert float(total) == pytest.approx(3.0 + 0.5 * 11.0) and float(count) == 4
    pairs = jnp.array([[1.0, 2.0], [-2.0, 2.0]])
    np.testing.assert_allclose(centering_penalty(pairs), [9.0, 0.0])
    # rankings: Σ over the valid responses only
    ranked = jnp.array([[1.0, 2.0, 5.0], [-1.0, 0.5, 7.0]])
    np.testing.assert_allclose(centering_penalty(ranked, jnp.array([[1, 1, 1], [1, 1, 0]])),
                               [64.0, 0.25])


def test_flip_likelihood_is_the_noisy_label_likelihood_and_bounded():
    """−log[(1−ε)σ(Δ) + εσ(−Δ)] against a float64 reference, ε = 0 is Bradley–Terry, and the
    loss of a confidently contradicted label tends to −log ε (its gradient to 0)."""
    from rlhf_jax.losses import flip_likelihood_loss

    deltas = np.array([-30.0, -3.0, -0.5, 0.0, 0.7, 4.0, 30.0], np.float32)
    for eps in (0.0, 0.05, 0.3):
        got = np.asarray(flip_likelihood_loss(jnp.asarray(deltas), eps))
        want = [-math.log((1 - eps) * math.exp(_log_sigmoid(d)) + eps * math.exp(_log_sigmoid(-d)))
                for d in deltas.astype(np.float64)]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert float(flip_likelihood_loss(jnp.float32(-30.0), 0.05)) == pytest.approx(
        -math.log(0.05), rel=1e-5)
    with pytest.raises(ValueError, match="flip_rate=0.5"):
        flip_likelihood_loss(jnp.zeros(2), 0.5)


def test_outlier_loss_is_the_minimum_over_the_outlier_term():
    """R3M's min over δ ≥ 0 of −log σ(Δ + δ) + λδ, against a brute-force minimisation over a
    fine grid of δ in float64; the optimal δ is `outlier_terms`; the gradient never exceeds λ
    in size below the knee."""
    import jax

    from rlhf_jax.losses import outlier_loss, outlier_terms

    lam = 0.2
    deltas = np.array([-6.0, -2.0, -0.3, 0.5, 1.3, 1.4, 3.0], np.float32)
    grid = np.linspace(0.0, 20.0, 400001)
    for d in deltas.astype(np.float64):
        objective = np.logaddexp(0.0, -(d + grid)) + lam * grid
        best = int(np.argmin(objective))
        assert float(outlier_loss(jnp.float32(d), lam)) == pytest.approx(objective[best],
                                                                           abs=1e-6)
        assert float(outlier_terms(jnp.float32(d), lam)) == pytest.approx(grid[best], abs=1e-3)
    grads = jax.vmap(jax.grad(lambda x: outlier_loss(x, lam)))(jnp.asarray(deltas))
    assert np.all(np.abs(np.asarray(grads)) <= lam + 1e-6)
    with pytest.raises(ValueError, match="0 < λ < 1"):
        outlier_loss(jnp.zeros(2), 1.0)
