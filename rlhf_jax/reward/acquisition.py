"""Active learning for reward models: which comparisons to ask humans about.

Every function takes the reward differences Δ = r(y₁) − r(y₂) of N candidate pairs under M
ensemble members, `delta_nm` [N, M], and returns a score per pair (higher = ask sooner). Member m
predicts P_m(y₁ ≻ y₂) = σ(Δ_m) (Bradley–Terry); the ensemble predicts p̄ = mean_m σ(Δ_m).

- random: uniform scores (the baseline);
- entropy: predictive entropy H(p̄) (Settles 2009, §3.1 uncertainty sampling);
- disagreement: std_m Δ_m, the ensemble's spread (query by committee, Seung et al. 1992);
- bald: mutual information between the label and the model, H(p̄) − mean_m H(σ(Δ_m))
  (Houlsby et al. 2011, eq. 2; Gal et al. 2017 with ensemble members as posterior samples):
  high only where members are each confident but disagree, not where the label is a coin flip.

Batch selection keeps a batch diverse: `select_top_k` with at most m pairs per prompt, or
`select_diverse`, greedy in embedding space (score plus distance to the pairs already chosen,
in the spirit of k-center core-sets, Sener & Savarese 2018).
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp

from rlhf_jax.reward.config import ACQUISITIONS  # noqa: F401 (re-exported)


def _bernoulli_entropy(p):
    """H(p) in nats, 0 at p ∈ {0, 1}."""
    return -(jax.scipy.special.xlogy(p, p) + jax.scipy.special.xlogy(1 - p, 1 - p))


@jax.jit
def predictive_entropy(delta_nm) -> jax.Array:
    """H(p̄), p̄ = mean_m σ(Δ_m): largest (log 2) when the ensemble's prediction is 50/50."""
    return _bernoulli_entropy(jax.nn.sigmoid(delta_nm).mean(-1))


@jax.jit
def disagreement(delta_nm) -> jax.Array:
    """Standard deviation of Δ over the ensemble members."""
    return jnp.std(delta_nm, axis=-1)


@jax.jit
def bald(delta_nm) -> jax.Array:
    """I(y; θ) = H(p̄) − mean_m H(σ(Δ_m)) ≥ 0 (Houlsby et al. 2011, eq. 2)."""
    p_nm = jax.nn.sigmoid(delta_nm)
    return _bernoulli_entropy(p_nm.mean(-1)) - _bernoulli_entropy(p_nm).mean(-1)


@jax.jit
def random_scores(key, delta_nm) -> jax.Array:
    """Uniform scores: random acquisition."""
    return jax.random.uniform(key, delta_nm.shape[:1])


def acquisition_scores(name: str, delta_nm, key: Optional[jax.Array] = None) -> jax.Array:
    """Scores [N] of acquisition function `name` (one of ACQUISITIONS); `key` for random."""
    delta_nm = jnp.asarray(delta_nm, jnp.float32)
    if delta_nm.ndim == 1:
        delta_nm = delta_nm[:, None]
    if name == "random":
        if key is None:
            raise ValueError("acquisition 'random' needs a key")
        return random_scores(key, delta_nm)
    fns = {"entropy": predictive_entropy, "disagreement": disagreement, "bald": bald}
    if name not in fns:
        raise ValueError(f"acquisition={name!r}: expected one of {ACQUISITIONS}")
    return fns[name](delta_nm)


@partial(jax.jit, static_argnames=("k", "num_groups", "max_per_group"))
def select_top_k(scores, k: int, groups=None, *, num_groups: int = 1,
                 max_per_group: int = 0) -> jax.Array:
    """Indices [k] of the best-scoring candidates, taking at most `max_per_group` from each
    group (e.g. prompt id in [0, num_groups)); 0 = no cap. Where the cap leaves fewer than k
    candidates, the rest are −1."""
    n = scores.shape[0]
    order = jnp.argsort(-scores)
    if groups is None or max_per_group <= 0:
        if k > n:  # fewer candidates than asked for: the rest are −1
            return jnp.concatenate([order, jnp.full(k - n, -1, order.dtype)])
        return order[:k]
    groups = jnp.asarray(groups, jnp.int32)

    def body(i, carry):
        counts, taken, out = carry
        j = order[i]
        g = groups[j]
        ok = (counts[g] < max_per_group) & (taken < k)
        out = jnp.where(ok, out.at[taken].set(j), out)
        return counts.at[g].add(ok), taken + ok, out

    _, _, out = jax.lax.fori_loop(
        0, n, body, (jnp.zeros(num_groups, jnp.int32), jnp.int32(0), jnp.full(k, -1, jnp.int32)))
    return out


@partial(jax.jit, static_argnames=("k",))
def select_diverse(scores, embeddings, k: int, weight: float = 1.0) -> jax.Array:
    """Greedy batch selection in embedding space: the first pick is the best score; each next
    pick maximises (score − min score)/(score range) + weight · d/d₀, d its Euclidean distance
    to the nearest pick so far and d₀ the largest distance from the first pick. Near-duplicates
    of a chosen pair lose their distance term, so the batch spreads out; weight 0 gives the
    top-k by score. O(N·D) memory and O(k·N·D) time."""
    s = scores.astype(jnp.float32)
    s = (s - s.min()) / jnp.maximum(s.max() - s.min(), 1e-12)
    e = embeddings.astype(jnp.float32)

    def dist(j):
        return jnp.sqrt(jnp.maximum(((e - e[j]) ** 2).sum(-1), 0.0))

    first = jnp.argmax(s)
    d0 = dist(first)
    scale = jnp.maximum(d0.max(), 1e-12)
    picked = jnp.zeros(s.shape[0], bool).at[first].set(True)

    def body(i, carry):
        picked, nearest, out = carry
        value = jnp.where(picked, -jnp.inf, s + weight * nearest)
        j = jnp.argmax(value)
        return (picked.at[j].set(True), jnp.minimum(nearest, dist(j) / scale),
                out.at[i].set(j))

    out = jnp.zeros(k, jnp.int32).at[0].set(first)
    _, _, out = jax.lax.fori_loop(1, k, body, (picked, d0 / scale, out))
    return out
