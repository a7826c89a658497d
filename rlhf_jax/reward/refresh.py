"""The pure pieces of refreshing a reward model on on-policy samples: labels for pairs of
responses, a buffer of the newest labelled pairs, its training batches, and accuracy.

A reward model fitted once on samples of the initial policy is asked, as PPO moves away, to
score text it never saw, and the policy learns to exploit its errors there (Gao et al. 2022,
"Scaling laws for reward model overoptimization"). Labelling fresh samples of the current
policy and training the reward model on them keeps the comparisons on-policy: online
collection while the policy trains (Christiano et al. 2017) and iterated online RLHF, reward
models retrained weekly on the newest policy's samples (Bai et al. 2022, §4.5). The stage that
uses these pieces is `stages.refresh`.

A pair buffer is {"tokens", "mask": [C, 2, T] int32 (prompt left-padded, response
right-padded, the preferred response first), "count": [] int32 (valid rows, the first
`count`; newest first)}.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.data import PreferenceBatch


def pair_labels(scores_a, scores_b, uniform=None, *, temperature: float = 0.0):
    """(a_preferred [n] bool, labelled [n] bool) of n pairs (a, b) from a judge's scores g.

    temperature 0: the judge itself, a ≻ b iff g_a > g_b; equal scores are ties and get no
    label. temperature T > 0: a simulated Bradley–Terry annotator around the judge (Bradley &
    Terry 1952; as `data.builtin.simulate_annotators`): a ≻ b iff u < σ((g_a − g_b) / T) for
    the given `uniform` draws u ~ U(0, 1) [n]; every pair is labelled. Host NumPy, float64.
    """
    g_a, g_b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    if temperature <= 0:
        return g_a > g_b, g_a != g_b
    if uniform is None:
        raise ValueError("pair_labels: temperature > 0 needs the uniform draws")
    p_a = 0.5 * (1.0 + np.tanh((g_a - g_b) / (2.0 * temperature)))  # σ(x), no overflow
    return np.asarray(uniform, np.float64) < p_a, np.ones(g_a.shape, bool)


def chosen_first(tokens, mask, ranks):
    """tokens/mask [n, 2, T] of pairs reordered so that the better-ranked response (`ranks`
    [n, 2], 0 best, as `PreferenceBatch.ranks`) comes first."""
    swap = (ranks[:, 1] < ranks[:, 0])[:, None, None]
    return (jnp.where(swap, tokens[:, ::-1], tokens), jnp.where(swap, mask[:, ::-1], mask))


def buffer_init(capacity: int, length: int) -> dict:
    """An empty pair buffer of `capacity` pairs of `length` tokens (module docstring)."""
    zeros = np.zeros((capacity, 2, length), np.int32)
    return {"tokens": zeros, "mask": zeros.copy(), "count": np.zeros((), np.int32)}


def buffer_add(buffer: dict, tokens, mask, keep) -> dict:
    """The buffer with the kept pairs of tokens/mask [m, 2, T] (`keep` [m] bool) in front, in
    their order, then the pairs it held; beyond its capacity C the oldest are dropped. Static
    shapes (jittable)."""
    c, m = buffer["tokens"].shape[0], tokens.shape[0]
    order = jnp.argsort(~keep, stable=True)  # the kept pairs first, in their order
    k = jnp.sum(keep).astype(jnp.int32)
    j = jnp.arange(c)
    rows = jnp.where(j < k, j, m + j - k)  # row j of [kept new; old]
    take = lambda new, old: jnp.concatenate([new[order], old])[rows]  # noqa: E731
    return {"tokens": take(tokens, buffer["tokens"]), "mask": take(mask, buffer["mask"]),
            "count": jnp.minimum(k + buffer["count"], c).astype(jnp.int32)}


def pair_batch(tokens, mask, weight, prompt_len: int) -> PreferenceBatch:
    """A `PreferenceBatch` of pairs [n, 2, T] whose first response is the preferred one,
    weighted by `weight` [n] (0: a padding row)."""
    n = tokens.shape[0]
    ones = jnp.ones((n,), jnp.int32)
    return PreferenceBatch(
        tokens=tokens, mask=mask, ranks=jnp.tile(jnp.arange(2, dtype=jnp.int32), (n, 1)),
        valid=jnp.ones((n, 2), jnp.int32), is_comparison=ones,
        rating=jnp.zeros((n,), jnp.float32), has_rating=0 * ones, annotator=-ones,
        weight=jnp.asarray(weight, jnp.float32), index=jnp.arange(n, dtype=jnp.int32),
        prompt_len=prompt_len)


def buffer_batch(buffer: dict, key, batch_size: int, prompt_len: int) -> PreferenceBatch:
    """`batch_size` pairs drawn uniformly with replacement from the buffer's valid rows (every
    weight 0 while it is empty)."""
    count = buffer["count"]
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(count, 1))
    weight = jnp.full((batch_size,), count > 0, jnp.float32)
    return pair_batch(buffer["tokens"][idx], buffer["mask"][idx], weight, prompt_len)


def pair_accuracy(sum_loss, params, batch: PreferenceBatch) -> dict:
    """{"accuracy", "loss", "margin", "pairs"} of a reward model on a batch of pairs, by the
    reward objective `sum_loss` (`make_reward_loss`): the weighted share of pairs whose
    preferred response it scores strictly higher (an ensemble by its members' mean), its mean
    loss and mean |r_a − r_b|; NaN when the batch weighs nothing."""
    loss_sum, (count, sums) = sum_loss(params, batch, None)
    mean = lambda x: jnp.where(count > 0, x / jnp.maximum(count, 1), jnp.nan)  # noqa: E731
    return {"accuracy": mean(sums["reward/accuracy"]), "loss": mean(loss_sum),
            "margin": mean(sums["reward/margin"]), "pairs": count}


def renormalised_head(params, rewards_nm):
    """`params` whose reward head gives mean 0 and std 1 (ddof 0) per head on a reference set
    whose rewards are `rewards_nm` [N, M]: g' = g/σ, b' = (b − μ)/σ (Ziegler et al. 2019, §2.2;
    the jittable form of `normalised_head`). A head whose rewards are constant is left as it
    was."""
    head = params["reward_head"]
    mu, sigma = jnp.mean(rewards_nm, 0), jnp.std(rewards_nm, 0)
    scale = jnp.where(sigma > 0, sigma, 1.0)
    shift = jnp.where(sigma > 0, mu, 0.0)
    gain = head["gain"].astype(jnp.float32) / scale
    bias = (head["bias"].astype(jnp.float32) - shift) / scale
    return {**params, "reward_head": {**head, "gain": gain.astype(head["gain"].dtype),
                                      "bias": bias.astype(head["bias"].dtype)}}
