"""The reward-model training objective over `PreferenceBatch`es (comparisons, rankings, ratings)."""
from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.reward.config import RewardLossConfig


def batch_rewards(model: nn.Module, params, batch, *, rng=None, deterministic: bool = True):
    """Rewards [B, K] (or [B, K, M] for an ensemble) of every response in the batch."""
    b, k, t = batch.tokens.shape
    rngs = None if rng is None else {"dropout": rng}
    out = model.apply({"params": params}, batch.tokens.reshape(b * k, t),
                      batch.mask.reshape(b * k, t), deterministic=deterministic, rngs=rngs)
    return out.reward.reshape(b, k, *out.reward.shape[1:])


def reward_loss_terms(rewards_bk, batch, cfg: RewardLossConfig):
    """Per-example comparison loss, scalar loss and centering penalty for rewards [B, K]."""
    valid = batch.valid > 0
    if rewards_bk.shape[1] == 2:
        first_wins = batch.ranks[:, 0] <= batch.ranks[:, 1]  # rank order may put it second
        chosen = jnp.where(first_wins, rewards_bk[:, 0], rewards_bk[:, 1])
        rejected = jnp.where(first_wins, rewards_bk[:, 1], rewards_bk[:, 0])
        eps = cfg.label_smoothing
        if batch.confidence is not None:  # soft labels: a flip with prob. 1 − confidence too
            q = 1.0 - batch.confidence
            eps = eps + q - 2.0 * eps * q  # either flip, not both
        if cfg.label_flip_rate:  # a soft label's flip probability q joins ε (either flip)
            f = cfg.label_flip_rate
            if batch.confidence is not None:
                q = 1.0 - batch.confidence
                f = f + q - 2.0 * f * q
            cmp = losses.flip_likelihood_loss(chosen - rejected, f)
        elif cfg.outlier_penalty:
            cmp = losses.outlier_loss(chosen - rejected, cfg.outlier_penalty)
        else:
            cmp = losses.bradley_terry_loss(chosen, rejected, margin_b=cfg.margin,
                                            label_smoothing=eps)
        cmp = jnp.where(batch.ranks[:, 0] == batch.ranks[:, 1], 0.0, cmp)  # a tie: no preference
    else:
        cmp = losses.plackett_luce_loss(rewards_bk, batch.ranks, valid)
    scalar = losses.scalar_regression_loss(rewards_bk[:, 0], batch.rating)
    centre = losses.centering_penalty(rewards_bk, batch.valid)
    return cmp, scalar, centre


def bootstrap_weights(index_b, member: int, seed: int = 0):
    """Poisson(1) weights [B] of examples by their dataset index for ensemble member `member`:
    each member trains on its own bootstrap resample of the data, the same every epoch (the
    online bootstrap of Oza & Russell 2001, as in bootstrapped DQN, Osband et al. 2016)."""
    key = jax.random.fold_in(jax.random.key(seed), member)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index_b)
    return jax.vmap(lambda k: jax.random.poisson(k, 1.0))(keys).astype(jnp.float32)


def make_reward_loss(model: nn.Module, cfg: RewardLossConfig, *, dropout: bool = False,
                     bootstrap: bool = False, bootstrap_seed: int = 0):
    """`sum_loss(params, batch, rng) -> (loss_sum, (count, metric_sums))` for `make_train_step`.

    loss = Σ_examples [comparison loss + λ·scalar loss + c·centering] / #labelled examples; an
    ensemble averages the loss over its members. `cfg.custom` replaces it with your own. With `bootstrap`, member m weighs each example
    by `bootstrap_weights(batch.index, m)`, so the members disagree where the data is thin.
    """
    if cfg.custom:
        user = losses.with_context(losses.resolve_loss(cfg.custom, "loss.custom"), model=model)
        return lambda params, batch, rng: losses.sum_form(user(params, batch, rng))

    def sum_loss(params, batch, rng):
        r = batch_rewards(model, params, batch, rng=rng if dropout else None,
                          deterministic=not dropout)
        members = r if r.ndim == 3 else r[..., None]  # [B, K, M]
        w = batch.weight
        cmp_w, sc_w = w * batch.is_comparison, w * batch.has_rating
        total, count = 0.0, jnp.sum(cmp_w) + jnp.sum(sc_w)
        metric = {}
        for m in range(members.shape[-1]):
            cmp, sc, centre = reward_loss_terms(members[..., m], batch, cfg)
            boot = (bootstrap_weights(batch.index, m, bootstrap_seed)
                    if bootstrap and members.shape[-1] > 1 else 1.0)
            t, _ = losses.hybrid_loss_sum(cmp, cmp_w * boot, sc, sc_w * boot, cfg.scalar_weight)
            total = total + t + cfg.centering_coef * jnp.sum(centre * cmp_w * boot)
        total = total / members.shape[-1]
        mean_r = members.mean(-1)
        best_first = batch.ranks[:, 0] < batch.ranks[:, 1]
        correct = jnp.where(best_first, mean_r[:, 0] > mean_r[:, 1], mean_r[:, 1] > mean_r[:, 0])
        metric["reward/accuracy"] = jnp.sum(correct * cmp_w)
        metric["reward/margin"] = jnp.sum(jnp.abs(mean_r[:, 0] - mean_r[:, 1]) * cmp_w)
        return total, (count, metric)
    return sum_loss
