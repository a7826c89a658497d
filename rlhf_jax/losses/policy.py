"""PPO objectives over response tokens (Schulman et al. 2017), as masked sums and counts."""
from __future__ import annotations

import jax.numpy as jnp


def ppo_policy_loss(logp_bt, old_logp_bt, advantages_bt, mask_bt, *, clip: float = 0.2):
    """Clipped surrogate (PPO eq. 7): Σ max(−A·ρ, −A·clip(ρ, 1±ε)) over masked tokens.

    Returns (loss_sum, count, {"ppo/clipfrac": Σ 1[clipped], "ppo/approx_kl": Σ ½(log ρ)²}).
    """
    mask = mask_bt.astype(jnp.float32)
    log_ratio = logp_bt - old_logp_bt
    ratio = jnp.exp(log_ratio)
    unclipped = -advantages_bt * ratio
    clipped = -advantages_bt * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
    loss = jnp.maximum(unclipped, clipped)
    metrics = {"ppo/clipfrac": jnp.sum((clipped > unclipped) * mask),
               "ppo/approx_kl": jnp.sum(0.5 * jnp.square(log_ratio) * mask)}
    return jnp.sum(loss * mask), jnp.sum(mask), metrics


def clipped_value_loss(values_bt, old_values_bt, returns_bt, mask_bt, *, clip: float = 0.2):
    """Σ ½·max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²) over masked tokens, and the count
    (the value clipping of OpenAI's baselines PPO2, kept by Huang et al. 2023)."""
    mask = mask_bt.astype(jnp.float32)
    v_clipped = old_values_bt + jnp.clip(values_bt - old_values_bt, -clip, clip)
    loss = 0.5 * jnp.maximum(jnp.square(values_bt - returns_bt),
                             jnp.square(v_clipped - returns_bt))
    return jnp.sum(loss * mask), jnp.sum(mask)


