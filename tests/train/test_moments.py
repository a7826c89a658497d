"""Adam with moments stored in float32 or bfloat16 (`OptimizerConfig.moment_dtype`): a float64
Adam reference, stochastic rounding's two neighbours and its mean, the second moment under a
falling gradient, and the sharded update on 8 fake devices."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax.train import (OptimizerConfig, apply_updates, hashed_bits, make_optimizer,
                            scale_by_adam_stored, stochastic_round)

B1, B2, EPS, LR, WD = 0.9, 0.999, 1e-8, 1e-2, 0.1


def _adam_state(state):
    """The Adam state (count, mu, nu) inside make_optimizer's chain."""
    is_adam = lambda x: hasattr(x, "mu") and hasattr(x, "nu")  # noqa: E731
    return next(x for x in jax.tree.leaves(state, is_leaf=is_adam) if is_adam(x))


def _reference_moments(g, m, v):
    """Adam's moments after one step, in float64 (Kingma & Ba 2015, Algorithm 1)."""
    return B1 * m + (1 - B1) * g, B2 * v + (1 - B2) * g * g


def _reference_update(p, m, v, t):
    """AdamW's update from the moments of step t, in float64 (decoupled decay, Loshchilov &
    Hutter 2019; no clipping)."""
    u = (m / (1 - B1 ** t)) / (np.sqrt(v / (1 - B2 ** t)) + EPS)
    return -LR * (u + WD * p)


def _bf16_spacing(x):
    """bfloat16's spacing at |x| (2^(e-7) for |x| in [2^e, 2^(e+1)))."""
    return 2.0 ** (np.floor(np.log2(np.maximum(np.abs(x), 1e-30))) - 7)


@pytest.mark.parametrize("moment_dtype", ["float32", "bfloat16"])
def test_stored_moments_match_float64_adam(moment_dtype):
    """Each step's moments equal float64 Adam's from the previously stored ones (float32: to a
    few ulp; bfloat16: one of the two bfloat16 neighbours of the float64 value), and its update
    equals float64 AdamW computed from the moments as stored (float32 arithmetic: a few ulp in
    the bias corrections and u, so ~1e-6 relative to lr·u)."""
    rng = np.random.default_rng(0)
    params = {"w": {"kernel": jnp.asarray(rng.normal(size=(64, 32)), jnp.float32)}}
    tx = make_optimizer(OptimizerConfig(learning_rate=LR, b1=B1, b2=B2, eps=EPS,
                                        weight_decay=WD, clip_norm=0.0, schedule="constant",
                                        moment_dtype=moment_dtype), params)
    state = tx.init(params)
    assert _adam_state(state).mu["w"]["kernel"].dtype == jnp.dtype(moment_dtype)
    step = jax.jit(tx.update)
    for t in range(1, 6):
        grads = {"w": {"kernel": jnp.asarray(rng.normal(size=(64, 32)) * 10.0 ** -t,
                                             jnp.float32)}}
        stored = _adam_state(state)
        m0, v0 = (np.asarray(x["w"]["kernel"], np.float64) for x in (stored.mu, stored.nu))
        p, g = (np.asarray(x["w"]["kernel"], np.float64) for x in (params, grads))
        m, v = _reference_moments(g, m0, v0)
        updates, state = step(grads, state, params)
        new = _adam_state(state)
        got_m, got_v = (np.asarray(x["w"]["kernel"], np.float64) for x in (new.mu, new.nu))
        # float32's error in b·x + (1 − b)·y: a few ulp of |b·x| + |(1 − b)·y| (m may cancel)
        f32_error = (lambda *terms: 4 * 2.0 ** -23 * sum(np.abs(x) for x in terms))  # noqa: E731
        for got, exact, err in ((got_m, m, f32_error(B1 * m0, (1 - B1) * g)),
                                (got_v, v, f32_error(B2 * v0, (1 - B2) * g * g))):
            spacing = _bf16_spacing(exact) if moment_dtype == "bfloat16" else 0.0
            assert np.all(np.abs(got - exact) <= spacing + err)  # bfloat16: a neighbour
        # the update is computed from the moments as stored
        np.testing.assert_allclose(updates["w"]["kernel"], _reference_update(p, got_m, got_v, t),
                                   rtol=1e-5, atol=LR * 1e-6)
        params = apply_updates(params, updates)


def test_stochastic_rounding_neighbours_and_mean():
    x = 1.0 + 0.3 * 2.0 ** -7  # between the bfloat16 neighbours 1 and 1 + 2^-7
    n = 200_000
    bits = jax.random.bits(jax.random.key(0), (n,), jnp.uint32)
    for sign in (1.0, -1.0):
        got = np.asarray(stochastic_round(jnp.full((n,), sign * x, jnp.float32), bits,
                                          jnp.bfloat16), np.float64)
        assert set(np.unique(got)) == {sign * 1.0, sign * (1.0 + 2.0 ** -7)}
        up = np.mean(np.abs(got) > 1.0)  # away from zero with probability 0.3
        assert abs(up - 0.3) < 5 * np.sqrt(0.3 * 0.7 / n)
        assert abs(got.mean() - sign * x) < 5 * 2.0 ** -7 * np.sqrt(0.3 * 0.7 / n)
    exact = jnp.asarray([0.0, 1.5, -3.0, 2.0 ** -20, jnp.inf, -jnp.inf], jnp.float32)
    out = stochastic_round(exact, bits[:6], jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(exact))
    assert np.isnan(float(stochastic_round(jnp.asarray([jnp.nan]), bits[:1], jnp.bfloat16)[0]))


def test_hashed_bits_are_uniform_and_differ_by_seed():
    """The top 16 bits (what stochastic rounding uses) look uniform: their mean and each of
    their bits' frequencies within 5 standard errors; two seeds' draws are uncorrelated."""
    shape = (256, 1024)
    a, b = (np.asarray(hashed_bits(shape, jnp.uint32(s)) >> 16, np.float64) for s in (1, 2))
    n = a.size
    assert abs(a.mean() / 2 ** 16 - 0.5) < 5 * np.sqrt(1 / 12 / n)
    for bit in range(16):
        assert abs(np.mean((a.astype(np.int64) >> bit) & 1) - 0.5) < 5 * 0.5 / np.sqrt(n)
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 5 / np.sqrt(n)
    assert len(np.unique(a)) > 0.97 * 2 ** 16  # expected: 1 - exp(-4) = 0.982 of them


def test_second_moment_follows_a_falling_gradient():
    """g = 1 for 200 steps, then 0.1 for 1000: v falls from 0.18 to 0.073 (float64). With
    bfloat16 moments rounded stochastically the mean stored v over 4096 weights stays within
    2% of it; optax's Adam on bfloat16 weights (moments in bfloat16, rounded to nearest) keeps
    v near its peak, since each step's 0.1% decrease is below half a bfloat16 spacing."""
    n, high, low = 4096, 200, 1000
    g_t = np.r_[np.ones(high), np.full(low, 0.1)]
    v = 0.0
    for g in g_t:
        v = B2 * v + (1 - B2) * g * g

    def final_nu(tx, dtype):
        params = jnp.zeros((n,), dtype)

        @jax.jit
        def run(g_t):
            def body(state, g):
                return tx.update(jnp.full((n,), g, dtype), state, params)[1], None
            return jax.lax.scan(body, tx.init(params), g_t)[0].nu
        return float(np.mean(np.asarray(run(jnp.asarray(g_t, dtype)), np.float64)))

    stochastic = final_nu(scale_by_adam_stored(B1, B2, EPS), jnp.float32)
    nearest = final_nu(optax.scale_by_adam(B1, B2, EPS), jnp.bfloat16)
    assert v == pytest.approx(0.073, rel=0.01)
    assert stochastic == pytest.approx(v, rel=0.02)
    assert nearest > 2 * v


def test_bfloat16_moments_sharded_like_parameters_and_equal_to_one_device():
    """Under FSDP over 8 devices the moments are split like their parameters, and an update
    gives bit-identical parameters and moments to the same update on one device (the rounding
    draws do not depend on the sharding)."""
    from rlhf_jax import sharding, train
    from rlhf_jax.models import load_or_init_model
    mesh, rules = sharding.make_mesh("fsdp=8"), sharding.logical_rules("fsdp")
    _, _, params = load_or_init_model("", "tiny-llama", mesh, rules, jax.random.key(0),
                                      heads=("lm",))
    # clip_norm=0: the global norm's sum is ordered differently over 8 shards (last-ulp changes)
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-3, total_steps=10, clip_norm=0.0,
                                        weight_decay=0.01, moment_dtype="bfloat16"), params)
    shardings = jax.tree.map(lambda x: x.sharding, params)
    _, init = train.compile_init(
        lambda p: train.create_train_state(p, tx, 1, param_shardings=shardings), params)
    state = init()
    mu = _adam_state(state.opt_state).mu
    emb = mu["transformer"]["wte"]["embedding"]
    assert emb.dtype == jnp.bfloat16 and emb.addressable_shards[0].data.size == emb.size // 8
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape, p.dtype)
                         * 1e-2, params)

    def two_steps(params, opt_state, grads):
        for _ in range(2):
            updates, opt_state = tx.update(grads, opt_state, params)
            params = apply_updates(params, updates)
        return params, opt_state

    sharded = jax.jit(two_steps)(params, state.opt_state, grads)
    one = jax.devices()[0]
    local = jax.jit(two_steps)(*jax.device_put((params, state.opt_state, grads), one))
    assert local[0]["transformer"]["wte"]["embedding"].sharding.device_set == {one}
    # the same float32 arithmetic on other shapes: XLA:CPU's vectorised loops may differ in the
    # last ulp; the moments' draws are the same, so only values a last-ulp change moves across
    # a rounding threshold may differ (by one bfloat16 spacing), not half of them
    for a, b in zip(jax.tree.leaves(sharded[0]), jax.tree.leaves(local[0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)
    for name in ("mu", "nu"):
        for a, b in zip(jax.tree.leaves(getattr(_adam_state(sharded[1]), name)),
                        jax.tree.leaves(getattr(_adam_state(local[1]), name))):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            assert a.dtype == b.dtype and np.mean(a != b) < 1e-3, name
            assert np.all(np.abs(a - b) <= _bf16_spacing(b) * 1.01), name
    assert np.any(np.asarray(_adam_state(sharded[1]).nu["transformer"]["wte"]["embedding"],
                             np.float32) != 0.0)


def test_moment_dtype_is_checked():
    with pytest.raises(ValueError, match="moment_dtype='float16'"):
        OptimizerConfig(moment_dtype="float16")
