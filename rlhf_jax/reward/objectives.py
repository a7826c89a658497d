"""Multi-objective reward models: K named objectives (helpfulness, harmlessness, …), one head
each on a shared backbone.

A comparison whose record names an `objective` trains that objective's head alone; one that
names none is about all of them and trains every head. A per-aspect rating (UltraFeedback's
`ratings`) named like an objective trains that head by regression, as an overall rating trains
a single head (`reward.make_reward_loss`); an overall rating trains every head. Each head is
normalised on its own at export (`reward.normalise_reward_params` works per output), the
held-out accuracy is reported per objective, and PPO, RLOO/GRPO and best-of-n score with a
weighted combination Σ_k λ_k r_k of the heads (`reward_model_scorer(weights=...)`).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from rlhf_jax import losses
from rlhf_jax.data import preference_batches
from rlhf_jax.reward.config import RewardLossConfig, parse_objectives  # noqa: F401
from rlhf_jax.reward.objective import batch_rewards, reward_loss_terms


def objective_weights(spec: str, objectives: Sequence[str]) -> np.ndarray:
    """"helpful=1,harmless=0.5" → weights over `objectives` (unnamed ones 0)."""
    weights = np.zeros(len(objectives), np.float32)
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in objectives:
            raise ValueError(f"objective_weights={spec!r}: expected name=weight pairs over the "
                             f"reward model's objectives {list(objectives)}")
        try:
            weights[list(objectives).index(name.strip())] = float(value)
        except ValueError:
            raise ValueError(f"objective_weights={spec!r}: {value!r} is not a number") from None
    return weights


def head_of(objectives: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """For each of a dataset's objective (or aspect) `names`, the index of the head of that
    name among `objectives`, −1 where there is none."""
    where = {o: i for i, o in enumerate(objectives)}
    return np.asarray([where.get(n, -1) for n in names] or [-1], np.int32)


def make_objective_reward_loss(model: nn.Module, cfg: RewardLossConfig,
                               objectives: Sequence[str], *, data_objectives: Sequence[str] = (),
                               aspects: Sequence[str] = ()):
    """`sum_loss(params, batch, rng)` for a reward model whose K heads are `objectives`.

    Head k: Σ over comparisons about objective k or about none of the comparison loss
    (`reward_loss_terms`, Bradley–Terry / Plackett–Luce) and its centering penalty, plus
    `cfg.scalar_weight` × the squared error to each response's rating named k
    (`batch.aspects`, columns named by `aspects`), or to its overall rating where it has none
    named k (a rating record that names another objective trains only that one's head); the loss is the mean over heads of these sums, divided by the batch's labelled
    examples. `data_objectives` names the indices of `batch.objective`.
    Accuracy counts each comparison on the head it is about (the heads' mean for one about
    none)."""
    k_heads = len(objectives)
    table = jnp.asarray(head_of(objectives, data_objectives))
    columns = [list(aspects).index(o) if o in aspects else -1 for o in objectives]

    def sum_loss(params, batch, rng):
        del rng
        r = batch_rewards(model, params, batch)
        r = r if r.ndim == 3 else r[..., None]  # [B, K, H] (one objective: H = 1)
        w = batch.weight
        about = (jnp.full(w.shape, -1, jnp.int32) if batch.objective is None
                 else jnp.where(batch.objective >= 0, table[jnp.maximum(batch.objective, 0)],
                                -1))
        cmp_w = w * batch.is_comparison
        rated_any = batch.has_rating > 0
        total = 0.0
        for h in range(k_heads):
            cmp, _, centre = reward_loss_terms(r[..., h], batch, cfg)
            mine = cmp_w * ((about == h) | (about < 0))
            # the head's rating: the one named like it where given, else the overall one
            y, has = batch.rating, batch.has_rating > 0
            if columns[h] >= 0 and batch.aspects is not None:
                named = batch.aspects[:, columns[h]]
                rated = jnp.isfinite(named)
                y, has = jnp.where(rated, named, y), has | rated
                rated_any = rated_any | rated
            sc = losses.scalar_regression_loss(r[:, 0, h], jnp.where(has, y, 0.0))
            # a rating whose record names another objective does not train this head
            t, _ = losses.hybrid_loss_sum(cmp, mine, sc, w * has * ((about == h) | (about < 0)),
                                          cfg.scalar_weight)
            total = total + t + cfg.centering_coef * jnp.sum(centre * mine)
        count = jnp.sum(cmp_w) + jnp.sum(w * rated_any)
        pick = jnp.where(about[:, None] >= 0,
                         jnp.take_along_axis(r, jnp.maximum(about, 0)[:, None, None], axis=2)
                         [..., 0], r.mean(-1))  # [B, K]: the head each row is about
        first = batch.ranks[:, 0] < batch.ranks[:, 1]
        correct = jnp.where(first, pick[:, 0] > pick[:, 1], pick[:, 1] > pick[:, 0])
        ranked = batch.ranks[:, 0] != batch.ranks[:, 1]  # a tie has no right answer
        metrics = {"reward/accuracy": jnp.sum(correct * cmp_w * ranked)}
        return total / k_heads, (count, metrics)

    return sum_loss


def evaluate_objectives(model, params, source, objectives: Sequence[str],
                        data_objectives: Sequence[str], *, batch_size: int, prompt_len: int,
                        num_responses: int, pad_id: int = 0) -> dict:
    """Held-out pairwise accuracy per objective: over the comparisons about objective k, how
    often head k ranks the preferred response first (`eval/accuracy_objective/<name>`, with
    the number of pairs); comparisons about none count for every head."""
    table = head_of(objectives, data_objectives)
    hits = np.zeros(len(objectives))
    pairs = np.zeros(len(objectives))
    for batch in preference_batches([source], batch_size, prompt_len=prompt_len,
                                    num_responses=num_responses, pad_id=pad_id, num_epochs=1,
                                    shuffle=False):
        r = np.asarray(batch_rewards(model, params, batch))
        r = r if r.ndim == 3 else r[..., None]  # [B, K, H]
        about = (np.full(len(r), -1) if batch.objective is None else
                 np.where(batch.objective >= 0, table[np.maximum(batch.objective, 0)], -1))
        for i in np.flatnonzero((batch.weight > 0) & (batch.is_comparison > 0)):
            ranks, valid = batch.ranks[i], batch.valid[i] > 0
            heads = [about[i]] if about[i] >= 0 else range(len(objectives))
            for h in heads:
                for a in np.flatnonzero(valid):
                    for b in np.flatnonzero(valid):
                        if ranks[a] < ranks[b]:
                            hits[h] += r[i, a, h] > r[i, b, h]
                            pairs[h] += 1
    out = {}
    for h, name in enumerate(objectives):
        if pairs[h]:
            out[f"eval/accuracy_objective/{name}"] = float(hits[h] / pairs[h])
            out[f"eval/pairs_objective/{name}"] = float(pairs[h])
    return out
