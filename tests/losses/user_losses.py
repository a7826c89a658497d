"""Losses written the way a user writes them in their own module, for tests/losses/test_custom.py:
a DPO, a Bradley–Terry reward loss and PPO's clipped surrogate, each from scratch (NumPy-style
jax.numpy, no library loss), plus a mean-form objective."""
import jax
import jax.numpy as jnp

from rlhf_jax import offline, reward


def my_dpo(params, inputs, rng, *, model, beta=0.1):
    """Sigmoid DPO (Rafailov et al. 2023, eq. 7) on each row's first two responses."""
    b = inputs["batch"]
    pi, _ = offline.sequence_logprobs(model, params, b.tokens, b.mask, b.prompt_len)
    ref = inputs["reference"]["responses"]
    first = b.ranks[:, 0] < b.ranks[:, 1]
    h = (pi[:, 0] - ref[:, 0]) - (pi[:, 1] - ref[:, 1])
    h = jnp.where(first, h, -h)
    w = b.weight * (b.ranks[:, 0] != b.ranks[:, 1])
    loss = -jax.nn.log_sigmoid(beta * h) * w
    return jnp.sum(loss), (jnp.sum(w), {"mine/margin": jnp.sum(h * w)})


def my_bradley_terry(params, batch, rng, *, model):
    """−log σ(r_w − r_l) (Bradley & Terry 1952), as a mean."""
    r = reward.batch_rewards(model, params, batch)
    first = batch.ranks[:, 0] < batch.ranks[:, 1]
    delta = jnp.where(first, r[:, 0] - r[:, 1], r[:, 1] - r[:, 0])
    w = batch.weight * batch.is_comparison
    loss = jnp.sum(-jax.nn.log_sigmoid(delta) * w) / jnp.maximum(jnp.sum(w), 1.0)
    return loss, {"mine/accuracy": jnp.sum((delta > 0) * w) / jnp.maximum(jnp.sum(w), 1.0)}


def my_clipped_surrogate(logp, old_logp, adv, mask, *, clip):
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), sum form."""
    ratio = jnp.exp(logp - old_logp)
    obj = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip, 1 + clip) * adv)
    m = mask.astype(jnp.float32)
    return -jnp.sum(obj * m), jnp.sum(m), {"mine/ratio": jnp.sum(ratio * m)}


def my_mean_objective(logp, old_logp, adv, mask, *, clip):
    """The same, as a mean over response tokens."""
    total, count, sums = my_clipped_surrogate(logp, old_logp, adv, mask, clip=clip)
    return total / count, {k: v / count for k, v in sums.items()}


def my_sequence_objective(logp, old_logp, adv, mask, *, clip):
    """A sequence-level clipped surrogate (GSPO, Zheng et al. 2025, eq. 5): the ratio is the
    geometric mean of the token ratios; the count is the number of sequences."""
    m = mask.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(m, axis=1), 1.0)
    ratio = jnp.exp(jnp.sum((logp - old_logp) * m, axis=1) / n)
    a = jnp.sum(adv * m, axis=1) / n
    obj = jnp.minimum(ratio * a, jnp.clip(ratio, 1 - clip, 1 + clip) * a)
    return -jnp.sum(obj), jnp.float32(logp.shape[0]), {}
