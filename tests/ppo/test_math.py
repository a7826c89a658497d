"""PPO maths against float64 Python-loop references and hand-computed cases."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.losses import clipped_value_loss, ppo_policy_loss, token_entropy
from rlhf_jax.ppo import (adaptive_kl_init, adaptive_kl_update, fixed_kl_init, fixed_kl_update,
                          gae, grpo_advantages, kl_estimate, masked_mean, rloo_advantages,
                          token_rewards, whiten)

RNG = np.random.default_rng(0)
MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], np.float32)


def _gae_loop(r, v, m, gamma, lam):
    b, t = r.shape
    adv = np.zeros((b, t))
    for i in range(b):
        n = int(m[i].sum())
        last = 0.0
        for s in reversed(range(n)):
            next_v = v[i, s + 1] if s + 1 < n else 0.0
            delta = r[i, s] + gamma * next_v - v[i, s]
            last = delta + gamma * lam * last
            adv[i, s] = last
    return adv, (adv + v) * m


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0), (0.5, 0.0)])
def test_gae_against_loop(gamma, lam):
    r = RNG.normal(size=MASK.shape)
    v = RNG.normal(size=MASK.shape)
    adv, ret = gae(jnp.asarray(r, jnp.float32), jnp.asarray(v, jnp.float32), jnp.asarray(MASK),
                   gamma=gamma, lam=lam)
    ref_adv, ref_ret = _gae_loop(r, v * MASK, MASK, gamma, lam)
    np.testing.assert_allclose(adv, ref_adv, atol=1e-5)
    np.testing.assert_allclose(ret, ref_ret, atol=1e-5)


def test_gae_by_hand():
    # one sequence of 2 tokens, γ=1, λ=1: Â_1 = r1 − V1, Â_0 = r0 + r1 − V0
    adv, _ = gae(jnp.array([[1.0, 2.0]]), jnp.array([[0.5, 0.25]]), jnp.ones((1, 2)),
                 gamma=1.0, lam=1.0)
    np.testing.assert_allclose(adv, [[2.5, 1.75]])


def test_whiten_and_masked_mean():
    x = RNG.normal(3.0, 2.0, size=MASK.shape)
    real = x[MASK > 0].astype(np.float64)
    w = np.asarray(whiten(jnp.asarray(x, jnp.float32), jnp.asarray(MASK)))
    np.testing.assert_allclose(w[MASK > 0], (real - real.mean()) / real.std(ddof=1), atol=1e-5)
    assert (w[MASK == 0] == 0).all()
    kept = np.asarray(whiten(jnp.asarray(x, jnp.float32), jnp.asarray(MASK), shift_mean=False))
    np.testing.assert_allclose(kept[MASK > 0], (real - real.mean()) / real.std(ddof=1)
                               + real.mean(), atol=1e-5)
    assert float(masked_mean(jnp.asarray(x), jnp.asarray(MASK))) == pytest.approx(real.mean())


def test_kl_estimators_by_hand_and_in_expectation():
    logp, ref = jnp.array([-1.0]), jnp.array([-1.5])  # log r = −0.5
    assert float(kl_estimate(logp, ref, "k1")[0]) == pytest.approx(0.5)
    assert float(kl_estimate(logp, ref, "k2")[0]) == pytest.approx(0.125)
    assert float(kl_estimate(logp, ref, "k3")[0]) == pytest.approx(math.exp(-0.5) - 1 + 0.5)
    # Monte Carlo over samples from π: k1 and k3 are unbiased for KL(π‖π_ref)
    p = np.array([0.5, 0.3, 0.15, 0.05])
    q = np.array([0.25, 0.25, 0.25, 0.25])
    true_kl = float(np.sum(p * np.log(p / q)))
    samples = jax.random.choice(jax.random.key(0), 4, (200_000,), p=jnp.asarray(p))
    lp, lq = jnp.log(jnp.asarray(p))[samples], jnp.log(jnp.asarray(q))[samples]
    for est in ("k1", "k3"):
        assert float(kl_estimate(lp, lq, est).mean()) == pytest.approx(true_kl, rel=0.02)
    assert (np.asarray(kl_estimate(lp, lq, "k3")) >= 0).all()
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(lp, lq, "k4")


def test_token_rewards_place_score_on_last_real_token():
    kl = jnp.asarray(RNG.normal(size=MASK.shape), jnp.float32)
    r = np.asarray(token_rewards(jnp.array([1.0, 2.0, 3.0]), kl, jnp.asarray(MASK), 0.1))
    expected = -0.1 * np.asarray(kl) * MASK
    expected[0, 5] += 1.0
    expected[1, 2] += 2.0
    expected[2, 0] += 3.0
    np.testing.assert_allclose(r, expected, atol=1e-6)


def test_kl_controllers():
    s = adaptive_kl_init(0.1)
    s = adaptive_kl_update(s, jnp.float32(12.0), 256, target=6.0, horizon=10000)
    assert float(s.beta) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))  # error clipped at 0.2
    s2 = adaptive_kl_update(adaptive_kl_init(0.1), jnp.float32(5.7), 100, target=6.0,
                            horizon=1000)
    assert float(s2.beta) == pytest.approx(0.1 * (1 + (5.7 / 6 - 1) * 0.1), rel=1e-6)
    assert float(fixed_kl_update(fixed_kl_init(0.3), 100.0, 10).beta) == pytest.approx(0.3)


def test_group_baselines():
    s = jnp.array([1.0, 2.0, 3.0, 10.0, 10.0, 16.0])
    np.testing.assert_allclose(rloo_advantages(s, 3), [1 - 2.5, 2 - 2.0, 3 - 1.5, -3, -3, 6])
    # GRPO: the sample std (ddof 1), as torch.std in the GRPO authors' code and TRL; ddof 0 on
    # request. Independent reference: float64 NumPy over each group.
    groups = np.array([[1.0, 2.0, 3.0], [10.0, 10.0, 16.0]])
    for ddof in (1, 0):
        want = ((groups - groups.mean(1, keepdims=True))
                / (groups.std(1, ddof=ddof, keepdims=True) + 1e-4)).reshape(-1)
        got = grpo_advantages(s, 3) if ddof == 1 else grpo_advantages(s, 3, ddof=0)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    assert float(grpo_advantages(s, 3)[0]) == pytest.approx(-1.0 / (1.0 + 1e-4), rel=1e-6)
    with pytest.raises(ValueError, match="no degrees of freedom"):
        grpo_advantages(jnp.ones(4), 1)


def test_ppo_losses_against_loop():
    logp = RNG.normal(-1, 0.3, size=MASK.shape)
    old = RNG.normal(-1, 0.3, size=MASK.shape)
    adv = RNG.normal(size=MASK.shape)
    total, count, m = ppo_policy_loss(*(jnp.asarray(a, jnp.float32) for a in (logp, old, adv)),
                                      jnp.asarray(MASK), clip=0.2)
    ref, clipped = 0.0, 0
    for i, j in zip(*np.nonzero(MASK)):
        ratio = math.exp(logp[i, j] - old[i, j])
        a, b = -adv[i, j] * ratio, -adv[i, j] * min(max(ratio, 0.8), 1.2)
        ref += max(a, b)
        clipped += b > a
    assert float(total) == pytest.approx(ref, rel=1e-5) and float(count) == MASK.sum()
    assert float(m["ppo/clipfrac"]) == clipped
    v, ov, ret = (RNG.normal(size=MASK.shape) for _ in range(3))
    vl, _ = clipped_value_loss(*(jnp.asarray(a, jnp.float32) for a in (v, ov, ret)),
                               jnp.asarray(MASK), clip=0.2)
    vref = sum(0.5 * max((v[i, j] - ret[i, j]) ** 2,
                         (ov[i, j] + min(max(v[i, j] - ov[i, j], -0.2), 0.2) - ret[i, j]) ** 2)
               for i, j in zip(*np.nonzero(MASK)))
    assert float(vl) == pytest.approx(vref, rel=1e-5)
    ent = token_entropy(jnp.zeros((1, 1, 8)))
    assert float(ent[0, 0]) == pytest.approx(math.log(8), rel=1e-6)
