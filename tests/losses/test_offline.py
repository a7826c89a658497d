"""Offline preference / offline-RL losses against float64 NumPy references written from the
papers' equations, plus the cases where the answer is known by hand.

Tolerances: every loss is a few float32 operations on inputs of size ≲ 30 (sums of log-probs),
so the float32 result is within ~10 ulps of the float64 one relative to the largest intermediate;
rtol 1e-5 with atol 1e-5·(largest input) covers that with margin and is far below any modelling
difference (e.g. a wrong sign or β placement changes results at the 1e-1 level).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.losses import (awr_loss, dpo_loss, filtered_bc_loss, ipo_loss, kto_loss,
                             kto_reference_point, orpo_loss, simpo_loss)


def _logsig(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def _sig(x):
    return np.exp(_logsig(x))


def _batch(seed=0, n=8):
    rng = np.random.default_rng(seed)
    lp = lambda: -rng.uniform(2.0, 30.0, n)  # noqa: E731 - sums of token log-probs
    return lp(), lp(), lp(), lp(), rng.integers(1, 20, n).astype(np.float64), \
        rng.integers(1, 20, n).astype(np.float64)


def _close(ours, ref, scale=30.0):
    np.testing.assert_allclose(np.asarray(ours, np.float64), ref, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("beta,eps,robust", [(0.1, 0.0, False), (0.5, 0.1, False),
                                             (0.1, 0.2, True)])
def test_dpo_family(beta, eps, robust):
    pc, pr, rc, rr, _, _ = _batch()
    loss, m = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps, robust=robust)
    h = beta * ((pc - rc) - (pr - rr))
    if robust:
        ref = ((1 - eps) * -_logsig(h) - eps * -_logsig(-h)) / (1 - 2 * eps)
    else:
        ref = (1 - eps) * -_logsig(h) + eps * -_logsig(-h)
    _close(loss, ref)
    _close(m["rewards/chosen"], beta * (pc - rc))
    _close(m["rewards/margin"], h)
    np.testing.assert_array_equal(m["rewards/accuracy"], (h > 0).astype(np.float32))


def test_dpo_by_hand():
    # policy = reference: h = 0, loss log 2, zero rewards, and the gradient pushes chosen up
    loss, _ = dpo_loss(-5.0, -5.0, -5.0, -5.0, beta=0.1)
    assert float(loss) == pytest.approx(np.log(2))
    g = jax.grad(lambda c, r: dpo_loss(c, r, -5.0, -5.0, beta=0.1)[0], argnums=(0, 1))(-5.0, -5.0)
    assert float(g[0]) == pytest.approx(-0.05) and float(g[1]) == pytest.approx(0.05)  # −β/2
    with pytest.raises(ValueError, match="robust DPO needs"):
        dpo_loss(-1.0, -2.0, -1.0, -2.0, label_smoothing=0.5, robust=True)


def test_ipo():
    pc, pr, rc, rr, _, _ = _batch(1)
    loss, _ = ipo_loss(pc, pr, rc, rr, beta=0.2)
    _close(loss, (((pc - rc) - (pr - rr)) - 1 / (2 * 0.2)) ** 2, scale=1000.0)
    # the minimum sits at a log-ratio gap of 1/(2β), not at infinity
    assert float(ipo_loss(-1.0 + 2.5, -1.0, -1.0, -1.0, beta=0.2)[0]) == 0.0


def test_simpo():
    pc, pr, _, _, lc, lr = _batch(2)
    loss, m = simpo_loss(pc, pr, lc, lr, beta=2.0, gamma=0.5)
    _close(loss, -_logsig(2.0 * pc / lc - 2.0 * pr / lr - 0.5))
    _close(m["rewards/chosen"], 2.0 * pc / lc)


@pytest.mark.parametrize("lam_d,lam_u", [(1.0, 1.0), (1.0, 1.33)])
def test_kto(lam_d, lam_u):
    pol, ref, pm, rm, _, _ = _batch(3)
    desirable = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)
    z0 = kto_reference_point(pm, rm)
    z0_ref = max(0.0, float(np.mean(pm - rm)))
    assert float(z0) == pytest.approx(z0_ref, rel=1e-5, abs=1e-5)
    loss, m = kto_loss(pol, ref, desirable, z0, beta=0.1, desirable_weight=lam_d,
                       undesirable_weight=lam_u)
    r = pol - ref
    lam = np.where(desirable, lam_d, lam_u)
    v = np.where(desirable, lam_d * _sig(0.1 * (r - z0_ref)), lam_u * _sig(0.1 * (z0_ref - r)))
    _close(loss, lam - v)
    _close(m["kto/weight"], lam)
    # z₀ carries no gradient, and a negative KL estimate is clipped to 0
    assert float(jax.grad(lambda a: kto_reference_point(a, rm))(pm).sum()) == 0.0
    assert float(kto_reference_point(np.array([-3.0]), np.array([-1.0]))) == 0.0


def test_orpo():
    pc, pr, _, _, lc, lr = _batch(4)
    nll = -pc / lc
    loss, m = orpo_loss(nll, pc, pr, lc, lr, lam=0.1)
    ac, ar = pc / lc, pr / lr
    log_odds = lambda a: a - np.log1p(-np.exp(a))  # noqa: E731
    ratio = log_odds(ac) - log_odds(ar)
    _close(loss, nll - 0.1 * _logsig(ratio))
    _close(m["orpo/log_odds_ratio"], ratio, scale=100.0)


def test_awr_and_rwr():
    rng = np.random.default_rng(5)
    lp, rewards = -rng.uniform(1, 20, 8), rng.normal(size=8) * 3
    baseline = rewards.mean()
    loss, m = awr_loss(lp, rewards, baseline, temperature=0.5, max_weight=5.0)
    w = np.minimum(np.exp((rewards - baseline) / 0.5), 5.0)
    _close(loss, -w * lp, scale=100.0)
    np.testing.assert_array_equal(m["awr/clipped"],
                                  (np.exp((rewards - baseline) / 0.5) > 5.0).astype(np.float32))
    assert 0 < float(m["awr/clipped"].sum()) < 8  # both branches exercised
    # the weight is a constant of the gradient: d/dlogp = −w
    g = jax.grad(lambda x: awr_loss(x, rewards, baseline, temperature=0.5,
                                    max_weight=5.0)[0].sum())(jnp.asarray(lp, jnp.float32))
    _close(g, -w, scale=5.0)


def test_filtered_bc_keeps_the_top_fraction():
    lp = jnp.arange(-8.0, 0.0)  # distinct log-probs
    rewards = jnp.array([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4])
    valid = jnp.array([1, 1, 1, 1, 1, 1, 1, 0])  # the last row is padding
    loss, m = filtered_bc_loss(lp, rewards, valid, top_fraction=0.4)  # ⌈0.4·7⌉ = 3 kept
    np.testing.assert_array_equal(m["bc/kept"], [0, 1, 0, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(loss, np.where(np.asarray(m["bc/kept"]) > 0, -lp, 0.0))
    assert float(m["bc/threshold"]) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="top_fraction=0"):
        filtered_bc_loss(lp, rewards, top_fraction=0.0)
