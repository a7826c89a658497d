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
