"""Advantage estimation over response tokens: GAE, whitening, group baselines (RLOO, GRPO).

Arrays are [B, T] over response positions, right-padded: `mask_bt` is 1 for real tokens.
Functions work on the whole batch axis (no vmap needed).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mean(x, mask, axis=None):
    """Σ x·m / max(Σ m, 1) (docs/design.md: exact masked means)."""
    mask = mask.astype(x.dtype)
    return jnp.sum(x * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def masked_var(x, mask, unbiased: bool = True):
    """Variance over the masked entries (Bessel-corrected by default)."""
    mean = masked_mean(x, mask)
    n = jnp.sum(mask)
    var = masked_mean(jnp.square(x - mean), mask)
    return var * n / jnp.maximum(n - 1.0, 1.0) if unbiased else var


def whiten(x, mask, *, shift_mean: bool = True, eps: float = 1e-8):
    """(x − μ)/σ over masked entries; with `shift_mean=False` the mean is added back, i.e. the
    values are only rescaled (reward whitening in "The N Implementation Details of RLHF with PPO",
    Huang et al. 2023). Masked entries become 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return jnp.where(mask > 0, out, 0.0)


def gae(rewards_bt, values_bt, mask_bt, *, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation (Schulman et al. 2016, eqs. 11–16), reverse `lax.scan`.

    δ_t = r_t + γ V_{t+1} − V_t with V = 0 after the last real token; Â_t = δ_t + γλ Â_{t+1}.
    Returns (advantages, returns = Â + V), both 0 at masked positions.
    """
    mask = mask_bt.astype(jnp.float32)
    values = values_bt * mask
    next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
    deltas = (rewards_bt * mask + gamma * next_values - values)

    def step(carry, delta_and_mask):
        delta, m = delta_and_mask
        adv = (delta + gamma * lam * carry) * m
        return adv, adv

    _, adv_tb = jax.lax.scan(step, jnp.zeros(rewards_bt.shape[0], jnp.float32),
                             (deltas.T, mask.T), reverse=True)
    advantages = adv_tb.T
    return advantages, (advantages + values) * mask


def rloo_advantages(scores_b, group_size: int):
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024): each of the k samples
    of a prompt is baselined by the mean score of the other k − 1. Rows are grouped
    consecutively: [p0s0, p0s1, ..., p1s0, ...]."""
    s = scores_b.reshape(-1, group_size)
    baseline = (s.sum(-1, keepdims=True) - s) / (group_size - 1)
    return (s - baseline).reshape(-1)


def grpo_advantages(scores_b, group_size: int, eps: float = 1e-4, ddof: int = 1):
    """Group-normalised advantages (Shao et al. 2024, GRPO, §4.1.2): (s − mean_g) / (std_g + ε).

    The group std is the sample std (`ddof=1`) by default, as in the GRPO authors' code and TRL's
    GRPOTrainer (`torch.std`, unbiased); `ddof=0` gives the population std.
    """
    if group_size - ddof < 1:
        raise ValueError(f"grpo_advantages: group_size={group_size} with ddof={ddof} leaves no "
                         "degrees of freedom")
    s = scores_b.reshape(-1, group_size)
    std = s.std(-1, keepdims=True, ddof=ddof)
    return ((s - s.mean(-1, keepdims=True)) / (std + eps)).reshape(-1)
