"""Adam with its moments stored in a chosen dtype: bfloat16 halves the optimiser state of
float32 weights (ZeRO's largest term, Rajbhandari et al. 2020, §3), rounded stochastically so
that updates below bfloat16's spacing survive in expectation."""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

MOMENT_DTYPES = ("float32", "bfloat16")


class ScaleByAdamStoredState(NamedTuple):
    """Steps taken, the raw key of the rounding stream, and the stored moments m and v."""

    count: jax.Array
    key: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def stochastic_round(x: jax.Array, bits: jax.Array, dtype) -> jax.Array:
    """`x` (float32) in `dtype`: float32 unchanged; bfloat16 rounded up or down at random, up
    with probability equal to x's distance from the lower neighbour over their spacing, so that
    E[result] = x (stochastic rounding, Gupta et al. 2015). `bits` (uint32, x's shape) are the
    random draws: their top 16 bits are added below bfloat16's last mantissa bit before
    truncation."""
    if jnp.dtype(dtype) == jnp.float32:
        return x.astype(jnp.float32)
    if jnp.dtype(dtype) != jnp.bfloat16:
        raise ValueError(f"stochastic_round: dtype {jnp.dtype(dtype)} is not float32 or "
                         "bfloat16")
    x = x.astype(jnp.float32)
    word = jax.lax.bitcast_convert_type(x, jnp.uint32)
    # sign and magnitude: adding to the magnitude rounds away from zero, for either sign
    kept = (word + (bits >> 16)) & jnp.uint32(0xFFFF0000)
    rounded = jax.lax.bitcast_convert_type(kept, jnp.float32)
    return jnp.where(jnp.isnan(x), x, rounded).astype(jnp.bfloat16)  # exact: low bits are 0


def _mix32(x: jax.Array) -> jax.Array:
    """A bijective 32-bit integer hash of low avalanche bias (Wellons's "lowbias32")."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def hashed_bits(shape, seed: jax.Array) -> jax.Array:
    """uint32 draws of `shape`: `_mix32` of each element's flat index plus a mixed `seed`
    (uint32 scalar). Elementwise on an iota, so the compiler fuses it into its consumer and
    splits it like that consumer (the same draws however the array is sharded), where
    `jax.random.bits` makes per-element counter arrays of 8 bytes an element first."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, dim) * jnp.uint32(
            stride % 2 ** 32)
        stride *= shape[dim]
    return _mix32(index + _mix32(seed.astype(jnp.uint32)))


def scale_by_adam_stored(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
                         dtype="bfloat16", seed: int = 0) -> optax.GradientTransformation:
    """Adam's direction (Kingma & Ba 2015, Algorithm 1) with m and v kept in `dtype`.

    Each step computes m = β1·m + (1−β1)·g and v = β2·v + (1−β2)·g² in float32 from the stored
    moments, stores them in `dtype`, and returns u = m̂ / (√v̂ + ε) from the stored values, with
    m̂ = m / (1−β1^t) and v̂ = v / (1−β2^t) (1 − β^t as −expm1(t·log β), accurate in float32
    where optax's 1 − β^t loses 1e-5), in the gradient's dtype.
    bfloat16 (8 mantissa bits) is stored by stochastic rounding (`stochastic_round`; Zamirai
    et al. 2020, "Revisiting BFloat16 Training"), not to nearest: with β2 = 0.999 a step
    changes v by (1−β2)(g²−v), at most 0.1% of v when g² < v, below half of bfloat16's 0.4%
    spacing, so nearest rounding would keep v from ever decreasing (and optax's bfloat16 state
    does). Stochastic rounding keeps each stored moment's expectation equal to the float32
    value. The draws are hashed from `seed`, the step count and the leaf's index, so a
    resumed run rounds as an uninterrupted one, and do not depend on how leaves are sharded
    (`hashed_bits`).
    """
    dtype = jnp.dtype(dtype)
    if dtype.name not in MOMENT_DTYPES:
        raise ValueError(f"scale_by_adam_stored: dtype {dtype} is not one of {MOMENT_DTYPES}")

    def init_fn(params):
        return ScaleByAdamStoredState(count=jnp.zeros([], jnp.int32),
                                      key=jax.random.key_data(jax.random.key(seed)),
                                      mu=optax.tree.zeros_like(params, dtype=dtype),
                                      nu=optax.tree.zeros_like(params, dtype=dtype))

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        t = count.astype(jnp.float32)
        # 1 − β^t as −expm1(t·log β): in float32, 1 − 0.999 alone is off by 1.3e-5 relative
        bias1, bias2 = -jnp.expm1(t * math.log(b1)), -jnp.expm1(t * math.log(b2))
        # one uint32 seed per step, leaf and moment: the key's words, mixed with the step count
        step_seed = _mix32(state.key[0] ^ _mix32(state.key[1] ^ _mix32(
            state.count.astype(jnp.uint32))))
        grads, treedef = jax.tree.flatten(updates)
        out, mus, nus = [], [], []
        for i, (g, m, v) in enumerate(zip(grads, treedef.flatten_up_to(state.mu),
                                          treedef.flatten_up_to(state.nu))):
            g32 = g.astype(jnp.float32)
            m32 = b1 * m.astype(jnp.float32) + (1 - b1) * g32
            v32 = b2 * v.astype(jnp.float32) + (1 - b2) * g32 * g32
            if dtype != jnp.float32:
                m32 = stochastic_round(m32, hashed_bits(m.shape, _mix32(step_seed + 2 * i)),
                                       dtype)
                v32 = stochastic_round(v32, hashed_bits(v.shape, _mix32(step_seed + 2 * i + 1)),
                                       dtype)
            mus.append(m32)
            nus.append(v32)
            # from the stored moments: the old ones are then dead once the new ones exist, so
            # the compiler can write them in place
            m_hat, v_hat = m32.astype(jnp.float32) / bias1, v32.astype(jnp.float32) / bias2
            out.append((m_hat / (jnp.sqrt(v_hat) + eps)).astype(g.dtype))
        unflat = lambda leaves: jax.tree.unflatten(treedef, leaves)  # noqa: E731
        return unflat(out), ScaleByAdamStoredState(count=count, key=state.key, mu=unflat(mus),
                                                   nu=unflat(nus))

    return optax.GradientTransformation(init_fn, update_fn)
