"""Models of the annotators: per-annotator reliability and bias in the reward objective, and
Dawid–Skene reliability estimates from agreement alone.

Pairwise labels here are read in *shown order*: response 0 of a comparison is the one shown
first, and the label says whether it was chosen. Annotator a is modelled as

    P_a(first ≻ second) = σ(Δ / τ_a + β_a),  Δ = r(first) − r(second),

a Bradley–Terry choice (Ouyang et al. 2022, eq. 1) with an annotator temperature τ_a (their
noise: large τ, labels close to coin flips) and a bias β_a toward the response shown first
(position bias). The mean of log τ is fixed at 0, because a common temperature and the reward's
scale cannot be told apart; β is free. Annotator-specific noise models follow Raykar et al.
2010 ("Learning from crowds"), here with the reward model as the shared latent score.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.reward.objective import batch_rewards


def init_annotator_params(num_annotators: int) -> dict:
    """log τ = 0 and β = 0 for every annotator."""
    return {"log_temperature": jnp.zeros(num_annotators, jnp.float32),
            "bias": jnp.zeros(num_annotators, jnp.float32)}


def temperatures(annotator_params: dict) -> jax.Array:
    """τ_a = exp(s_a − mean s), the identified temperatures."""
    s = annotator_params["log_temperature"]
    return jnp.exp(s - s.mean())


def annotator_log_likelihood(delta_b, first_chosen_b, annotator_b, annotator_params: dict, *,
                             use_bias: bool = True) -> jax.Array:
    """log P_a(label) per comparison [B]: log σ(z) if the first-shown response was chosen, else
    log σ(−z), with z = Δ/τ_a + β_a. Rows with annotator −1 (unknown) use τ = 1, β = 0."""
    a = jnp.maximum(annotator_b, 0)
    known = annotator_b >= 0
    tau = jnp.where(known, temperatures(annotator_params)[a], 1.0)
    beta = jnp.where(known & use_bias, annotator_params["bias"][a], 0.0)
    z = delta_b / tau + beta
    return jnp.where(first_chosen_b, jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z))


def make_annotator_reward_loss(model: nn.Module, *, use_bias: bool = True):
    """`sum_loss(params, batch, rng)` for `train.make_train_step` over params
    {"model": reward model, "annotators": init_annotator_params(A)}: the negative
    log-likelihood of the pairwise labels under the annotator model above, each row weighted by
    `batch.weight`. An ensemble's members (reward [B, 2, M]) share the annotator parameters and
    their losses are averaged. Accuracy counts the reward model's ranking of the two responses
    against the label."""
    def sum_loss(params, batch, rng):
        del rng
        r = batch_rewards(model, params["model"], batch)
        members = r if r.ndim == 3 else r[..., None]
        first_chosen = batch.ranks[:, 0] < batch.ranks[:, 1]
        w = batch.weight * batch.is_comparison * (batch.ranks[:, 0] != batch.ranks[:, 1])
        nll = 0.0
        for m in range(members.shape[-1]):
            delta = members[:, 0, m] - members[:, 1, m]
            ll = annotator_log_likelihood(delta, first_chosen, batch.annotator,
                                          params["annotators"], use_bias=use_bias)
            nll = nll - jnp.sum(ll * w)
        mean_delta = members.mean(-1)[:, 0] - members.mean(-1)[:, 1]
        correct = jnp.where(first_chosen, mean_delta > 0, mean_delta < 0)
        return nll / members.shape[-1], (jnp.sum(w), {"reward/accuracy": jnp.sum(correct * w)})
    return sum_loss


def dawid_skene(items, annotators, labels, *, num_classes: int = 2, iterations: int = 100,
                tol: float = 1e-7, smoothing: float = 0.01,
                num_items: Optional[int] = None, num_annotators: Optional[int] = None) -> dict:
    """Dawid & Skene (1979) EM: each annotator's confusion matrix and each item's true-class
    posterior, from the labels alone (no gold).

    `items`, `annotators`, `labels` [L]: item index, annotator index and class of each label.
    Starts from majority-vote posteriors; the M-step sets π_a[k, l] ∝ smoothing + Σ posterior
    mass of class k on items where a said l (eq. 2.3), the E-step
    T_i(k) ∝ p_k Π_labels π_a[k, l] (eq. 2.5). Stops when the mean log-likelihood gains less
    than `tol`. Returns {"confusion" [A, K, K] (true, observed), "posterior" [I, K],
    "prior" [K], "accuracy" [A] (P(label = true class), prior-weighted), "log_likelihood"
    (per label, every iteration)}.
    """
    items = np.asarray(items, np.int64)
    annotators = np.asarray(annotators, np.int64)
    labels = np.asarray(labels, np.int64)
    if not (items.shape == annotators.shape == labels.shape) or items.ndim != 1:
        raise ValueError("items, annotators and labels must be 1-D arrays of equal length")
    if labels.size == 0:
        raise ValueError("dawid_skene needs at least one label")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes})")
    n_i = int(num_items if num_items is not None else items.max() + 1)
    n_a = int(num_annotators if num_annotators is not None else annotators.max() + 1)
    onehot = np.eye(num_classes)[labels]  # [L, K]
    post = np.zeros((n_i, num_classes))
    np.add.at(post, items, onehot)  # majority vote
    seen = post.sum(1) > 0
    post[seen] /= post[seen].sum(1, keepdims=True)
    post[~seen] = 1.0 / num_classes
    history = []
    confusion = prior = None
    for _ in range(iterations):
        prior = post[seen].mean(0)
        counts = np.full((n_a, num_classes, num_classes), float(smoothing))
        # counts[a, k, l] += posterior of class k on the item, for a label l by a
        np.add.at(counts, annotators, post[items][:, :, None] * onehot[:, None, :])
        confusion = counts / np.maximum(counts.sum(-1, keepdims=True), 1e-300)
        log_pi = np.log(np.maximum(confusion, 1e-300))
        log_t = np.tile(np.log(np.maximum(prior, 1e-300)), (n_i, 1))
        np.add.at(log_t, items, log_pi[annotators, :, labels])  # [L, K] per label
        norm = np.logaddexp.reduce(log_t, axis=1)
        post = np.where(seen[:, None], np.exp(log_t - norm[:, None]), 1.0 / num_classes)
        history.append(float(norm[seen].sum() / labels.size))
        if len(history) > 1 and history[-1] - history[-2] < tol:
            break
    prior = post[seen].mean(0)  # the class prior of the returned posteriors
    accuracy = np.einsum("k,akk->a", prior, confusion)
    return {"confusion": confusion, "posterior": post, "prior": prior, "accuracy": accuracy,
            "log_likelihood": history}
