"""Scoring whole splits with a reward model: evaluation and head normalisation."""
from __future__ import annotations

import jax
import numpy as np

from rlhf_jax.data import preference_batches
from rlhf_jax.reward.evaluate import comparison_metrics, normalised_head
from rlhf_jax.reward.objective import batch_rewards


_score = jax.jit(batch_rewards, static_argnums=0)  # one compile per model and batch shape


def score_source(model, params, source, *, batch_size: int, prompt_len: int,
                 num_responses: int, pad_id: int = 0):
    """Rewards [N, K(, M)], ranks [N, K], valid [N, K] and annotators [N] of a whole split, in
    the source's order (a bucketed pass visits examples by length)."""
    rewards, ranks, valid, annotator, index = [], [], [], [], []
    for batch in preference_batches([source], batch_size, prompt_len=prompt_len,
                                    num_responses=num_responses, pad_id=pad_id, num_epochs=1,
                                    shuffle=False):
        keep = batch.weight > 0
        rewards.append(np.asarray(_score(model, params, batch))[keep])
        ranks.append(batch.ranks[keep])
        valid.append(batch.valid[keep])
        annotator.append(batch.annotator[keep])
        index.append(batch.index[keep])
    order = np.argsort(np.concatenate(index), kind="stable")
    return tuple(np.concatenate(x)[order] for x in (rewards, ranks, valid, annotator))


def evaluate_comparisons(model, params, source, *, annotators=(), **kw) -> dict:
    """Held-out metrics over every ranked pair (i preferred to j) of every example."""
    rewards, ranks, valid, annotator = score_source(model, params, source, **kw)
    mean = rewards.mean(-1) if rewards.ndim == 3 else rewards
    chosen, rejected, who = [], [], []
    k = ranks.shape[1]
    for i in range(k):
        for j in range(k):
            sel = (valid[:, i] > 0) & (valid[:, j] > 0) & (ranks[:, i] < ranks[:, j])
            chosen.append(mean[sel, i])
            rejected.append(mean[sel, j])
            who.append(annotator[sel])
    metrics = comparison_metrics(np.concatenate(chosen), np.concatenate(rejected),
                                 np.concatenate(who), annotators)
    if rewards.ndim == 3:  # ensemble disagreement, the uncertainty score
        metrics["eval/ensemble_std"] = float(rewards.std(-1)[valid > 0].mean())
    return metrics


def normalise_reward_params(model, params, source, *, max_samples: int = 512, **kw):
    """Params whose reward head gives mean 0 / std 1 on the split's responses, and (μ, σ) before."""
    rewards, _, valid, _ = score_source(model, params, source, **kw)
    flat = rewards[valid > 0][:max_samples]
    flat = flat.reshape(len(flat), -1)
    head = params["reward_head"]
    gain, bias = normalised_head(np.asarray(head["gain"]), np.asarray(head["bias"]), flat)
    # placed as the old head was, so that scoring with the new params reuses the compiled program
    new_head = dict(head, gain=jax.device_put(gain, getattr(head["gain"], "sharding", None)),
                    bias=jax.device_put(bias, getattr(head["bias"], "sharding", None)))
    stats = {"mean_before": flat.mean(0).tolist(), "std_before": flat.std(0).tolist(),
             "samples": int(len(flat))}
    return {**params, "reward_head": new_head}, stats
