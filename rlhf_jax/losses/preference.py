"""Reward-model objectives from human judgments: pairwise, rankings, scalar ratings, hybrids.

All functions take per-example rewards and return per-example losses, so callers can mask, weight
and reduce them exactly (sums and counts) across micro-batches.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def bradley_terry_loss(reward_chosen_b, reward_rejected_b, *, margin_b=0.0,
                       label_smoothing: float = 0.0):
    """−log σ(r_w − r_l − m): Bradley & Terry (1952), as used for reward models by
    Ziegler et al. (2019, eq. 1) and Ouyang et al. (2022, eq. 1); the margin m is Llama 2's
    (Touvron et al. 2023, eq. 2).

    With label noise ε (`label_smoothing`, the probability that a label was flipped; a scalar
    or one per example, e.g. 1 − an AI judge's probability) the loss is the expected one under
    that noise: −(1−ε) log σ(Δ) − ε log σ(−Δ).
    """
    delta = (reward_chosen_b - reward_rejected_b - margin_b).astype(jnp.float32)
    loss = -jax.nn.log_sigmoid(delta)
    if not isinstance(label_smoothing, (int, float)) or label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * jax.nn.log_sigmoid(-delta)
    return loss


def flip_likelihood_loss(delta_b, flip_rate: float):
    """−log[(1−ε)·σ(Δ) + ε·σ(−Δ)]: the Bradley–Terry likelihood of a label that was flipped
    with probability ε (the forward-corrected likelihood of a noisy label, Patrini et al. 2017
    eq. 6; for preferences, the noise model of Chowdhury et al. 2024, §2). Unlike the expected
    loss of `bradley_terry_loss`'s label smoothing, it is bounded by −log ε as Δ → −∞, so a
    label the model confidently contradicts (an inverted one) cannot pull without limit. ε may
    be one per example (e.g. combined with a soft label's own flip probability)."""
    if isinstance(flip_rate, (int, float)):
        if not 0 <= flip_rate < 0.5:
            raise ValueError(f"flip_rate={flip_rate}: expected 0 <= ε < 0.5")
        if flip_rate == 0:
            return -jax.nn.log_sigmoid(delta_b.astype(jnp.float32))
    delta = delta_b.astype(jnp.float32)
    eps = jnp.clip(jnp.asarray(flip_rate, jnp.float32), 1e-12, 1.0 - 1e-7)
    return -jnp.logaddexp(jnp.log1p(-eps) + jax.nn.log_sigmoid(delta),
                          jnp.log(eps) + jax.nn.log_sigmoid(-delta))


def outlier_loss(delta_b, penalty: float):
    """min_{δ≥0} −log σ(Δ + δ) + λ·δ: Bradley–Terry with a sparse per-example outlier term δ
    (R3M, Bukharin et al. 2024, eq. 4, with the ℓ1 penalty λ), minimised over δ in closed form.
    The minimiser is δ* = max(0, logit(1−λ) − Δ) (`outlier_terms`), so for Δ ≥ logit(1−λ) the
    loss is the usual −log σ(Δ) and below it the line −log(1−λ) + λ·(logit(1−λ) − Δ): a label
    the model contradicts costs at most slope λ, and δ* > 0 names it an outlier. 0 < λ < 1."""
    if not 0 < penalty < 1:
        raise ValueError(f"outlier penalty λ={penalty}: expected 0 < λ < 1")
    delta = delta_b.astype(jnp.float32)
    knee = jnp.log1p(-penalty) - jnp.log(penalty)  # logit(1 − λ)
    line = -jnp.log1p(-penalty) + penalty * (knee - delta)
    return jnp.where(delta >= knee, -jax.nn.log_sigmoid(delta), line)


def outlier_terms(delta_b, penalty: float):
    """R3M's optimal outlier term per example, δ* = max(0, logit(1−λ) − Δ) (`outlier_loss`)."""
    knee = jnp.log1p(-penalty) - jnp.log(penalty)
    return jnp.maximum(0.0, knee - jnp.asarray(delta_b, jnp.float32))


def plackett_luce_loss(rewards_bk, ranks_bk, valid_bk=None):
    """Negative log-likelihood of a ranking under Plackett–Luce (Plackett 1975; Luce 1959).

    −log P = −Σ_i [r_i − log Σ_{j: rank_j ≥ rank_i} exp r_j], summed over the responses i that
    beat at least one other (rank 0 is best). Ties share a risk set (Breslow's approximation), and
    the worst group, which is chosen over nothing, contributes nothing. For K = 2 without ties this
    is exactly the Bradley–Terry loss. Invalid (padding) responses are ignored.
    """
    r = rewards_bk.astype(jnp.float32)
    valid = jnp.ones_like(r, bool) if valid_bk is None else valid_bk.astype(bool)
    # risk set of i: valid j with rank_j >= rank_i
    in_set = (ranks_bk[:, None, :] >= ranks_bk[:, :, None]) & valid[:, None, :]  # [B, i, j]
    lse = jax.nn.logsumexp(jnp.where(in_set, r[:, None, :], -jnp.inf), axis=-1)
    worst = jnp.max(jnp.where(valid, ranks_bk, -1), axis=-1, keepdims=True)
    counted = valid & (ranks_bk < worst)
    return -jnp.sum(jnp.where(counted, r - lse, 0.0), axis=-1)


def scalar_regression_loss(reward_b, target_b):
    """Squared error (r − y)² to a normalised rating y."""
    return jnp.square(reward_b.astype(jnp.float32) - target_b)


def hybrid_loss_sum(pair_loss_b, pair_mask_b, scalar_loss_b, scalar_mask_b, scalar_weight: float):
    """Σ pairwise losses + λ · Σ scalar losses, and the number of labelled examples of both kinds.

    Dividing the sum by the count gives the per-example mean of a batch that mixes both kinds of
    labels, which stays exact under gradient accumulation.
    """
    total = jnp.sum(pair_loss_b * pair_mask_b) + scalar_weight * jnp.sum(scalar_loss_b *
                                                                         scalar_mask_b)
    return total, jnp.sum(pair_mask_b) + jnp.sum(scalar_mask_b)


def centering_penalty(rewards_bk, valid_bk=None):
    """(Σ_k r_k)² over each example's valid responses, (r_w + r_l)² for a pair: keeps the rewards
    centred on zero (Eisenstein et al. 2023, §3)."""
    r = rewards_bk.astype(jnp.float32)
    if valid_bk is not None:
        r = jnp.where(valid_bk > 0, r, 0.0)
    return jnp.square(jnp.sum(r, axis=1))
