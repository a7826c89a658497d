"""The offline objectives over `PreferenceBatch`es: which records each method reads, the
sequence log-probabilities it needs, and `make_offline_loss` for `train.make_train_step`.

A batch row holds a prompt with K responses (`ranks`, 0 best) or one response with a rating
(binary feedback is a rating of ±1). Pairwise methods (DPO, cDPO, robust DPO, IPO, SimPO, ORPO)
compare the best response of a row with each lower-ranked one ("best vs each other" for
rankings; one pair for a comparison). KTO treats every response as its own example: the best
of a comparison is desirable, the others undesirable; a binary record is what its label says.
AWR and filtered BC weight each response by its logged reward: the rating, or +1 for the best
response of a comparison and −1 for the others.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.offline.config import PAIRWISE, OfflineLossConfig
from rlhf_jax.models import DecoderModel, TransformerConfig, predicted_logprobs


def sequence_logprobs(model: DecoderModel, params, tokens, mask, prompt_len: int):
    """Σ log π(response tokens | prompt) and the response lengths, for tokens/mask [..., P+R]
    laid out as in `PreferenceBatch` (prompt left-padded to P, response right-padded). Returns
    (log-prob sums, lengths), float32, shaped like the leading axes."""
    lead, t = tokens.shape[:-1], tokens.shape[-1]
    flat_t, flat_m = tokens.reshape(-1, t), mask.reshape(-1, t)
    config: TransformerConfig = model.config
    out = model.apply({"params": params}, flat_t, flat_m, skip_logits=config.logit_chunk > 0)
    logp, _ = predicted_logprobs(out, params, config, flat_t[:, prompt_len:], prompt_len)
    resp = flat_m[:, prompt_len:] > 0
    total = jnp.sum(jnp.where(resp, logp, 0.0), axis=-1)
    return total.reshape(lead), jnp.sum(resp, axis=-1).astype(jnp.float32).reshape(lead)


def reference_logprobs(model: DecoderModel, ref_params, batch, partners=None) -> dict:
    """The reference policy's log-prob sums of every response [B, K] ("responses") and, given
    KTO's mismatched completions (`partners`: {"tokens", "mask"} [B, P+R]), of those [B]
    ("partners"); no gradient."""
    ref = jax.lax.stop_gradient(ref_params)
    out = {"responses": sequence_logprobs(model, ref, batch.tokens, batch.mask,
                                          batch.prompt_len)[0]}
    if partners is not None:
        out["partners"] = sequence_logprobs(model, ref, partners["tokens"], partners["mask"],
                                            batch.prompt_len)[0]
    return out


def _best(batch):
    """Index of each row's best valid response [B], and the [B, K] mask of valid responses
    ranked strictly below it."""
    big = jnp.iinfo(jnp.int32).max
    ranks = jnp.where(batch.valid > 0, batch.ranks, big)
    best = jnp.argmin(ranks, axis=1)
    best_rank = jnp.take_along_axis(ranks, best[:, None], axis=1)
    return best, (batch.valid > 0) & (ranks > best_rank) & (ranks < big)


def logged_rewards(batch):
    """The reward each response was logged with [B, K] and which responses count [B, K]: the
    rating (binary: ±1) for single-response rows, +1 / −1 for the best / the others of a
    comparison or ranking (ties with the best count as best)."""
    best, worse = _best(batch)
    valid = batch.valid > 0
    compared = jnp.where(worse, -1.0, 1.0)
    rated = jnp.broadcast_to(batch.rating[:, None], compared.shape)
    reward = jnp.where((batch.is_comparison > 0)[:, None], compared, rated)
    labelled = (batch.is_comparison > 0)[:, None] | (batch.has_rating > 0)[:, None]
    return reward.astype(jnp.float32), valid & labelled & (batch.weight > 0)[:, None]


def _pair_loss(cfg: OfflineLossConfig, pc, pr, rc, rr, lc, lr, nll_c):
    m = cfg.method
    if m in ("dpo", "cdpo", "rdpo"):
        return losses.dpo_loss(pc, pr, rc, rr, beta=cfg.beta,
                               label_smoothing=0.0 if m == "dpo" else cfg.label_smoothing,
                               robust=m == "rdpo")
    if m == "ipo":
        return losses.ipo_loss(pc, pr, rc, rr, beta=cfg.beta)
    if m == "simpo":
        return losses.simpo_loss(pc, pr, lc, lr, beta=cfg.simpo_beta, gamma=cfg.gamma)
    return losses.orpo_loss(nll_c, pc, pr, lc, lr, lam=cfg.orpo_lambda)


def offline_loss_sums(cfg: OfflineLossConfig, logp, lengths, batch,
                      ref: Optional[dict] = None, policy_partners=None):
    """(loss sum, (count, metric sums)) of one batch from the policy's log-prob sums `logp`
    [B, K] and response `lengths` [B, K], the reference's (`reference_logprobs`, when the
    method uses one) and, for KTO, the policy's log-probs of the mismatched completions.

    The count is the number of pairs (pairwise methods) or of responses (KTO, AWR, filtered
    BC: the kept ones) in the batch, so that `accumulate_gradients` divides once by it. KTO's
    reference point, AWR's baseline and filtered BC's ranking are statistics of this batch.
    """
    m, w = cfg.method, batch.weight
    if m in PAIRWISE:
        best, worse = _best(batch)
        take = lambda x: jnp.take_along_axis(x, best[:, None], axis=1)  # noqa: E731
        pc, lc = take(logp), take(lengths)
        rc = take(ref["responses"]) if ref is not None else jnp.zeros_like(pc)
        rr = ref["responses"] if ref is not None else jnp.zeros_like(logp)
        nll_c = -pc / jnp.maximum(lc, 1.0)
        loss, metrics = _pair_loss(cfg, pc, logp, rc, rr, lc, lengths, nll_c)
        weight = worse * w[:, None]
    elif m == "kto":
        reward, labelled = logged_rewards(batch)
        z0 = losses.kto_reference_point(policy_partners, ref["partners"], w)
        loss, metrics = losses.kto_loss(logp, ref["responses"], reward > 0, z0, beta=cfg.beta,
                                        desirable_weight=cfg.desirable_weight,
                                        undesirable_weight=cfg.undesirable_weight)
        weight = labelled.astype(jnp.float32)
        good = (reward > 0) * weight
        metrics = {**metrics, "kto/kl_reference_point": jnp.broadcast_to(z0, loss.shape),
                   "kto/desirable": good.astype(jnp.float32)}
    else:
        reward, labelled = logged_rewards(batch)
        weight = labelled.astype(jnp.float32)
        flat = lambda x: x.reshape(-1)  # noqa: E731
        if m == "awr":  # baseline: the batch's mean logged reward
            baseline = jnp.sum(reward * weight) / jnp.maximum(jnp.sum(weight), 1.0)
            loss, metrics = losses.awr_loss(logp, reward, baseline,
                                            temperature=cfg.temperature,
                                            max_weight=cfg.max_weight)
        else:
            loss, metrics = losses.filtered_bc_loss(flat(logp), flat(reward), flat(weight) > 0,
                                                    top_fraction=cfg.top_fraction)
            loss = loss.reshape(logp.shape)
            kept = metrics["bc/kept"].reshape(logp.shape)
            # the NLL is averaged over the kept responses (ReST, RAFT): the kept share is not
            # also a learning-rate factor
            share = jnp.sum(kept) / jnp.maximum(jnp.sum(weight), 1.0)
            weight = weight * kept
            metrics = {"bc/kept_fraction": jnp.broadcast_to(share, logp.shape),
                       "bc/threshold": jnp.broadcast_to(metrics["bc/threshold"], logp.shape)}
        metrics["rewards/logged"] = reward
    count = jnp.sum(weight)
    sums = {k: jnp.sum(jnp.broadcast_to(v, loss.shape) * weight) for k, v in metrics.items()}
    return jnp.sum(loss * weight), (count, sums)


def make_offline_loss(model: DecoderModel, cfg: OfflineLossConfig, ref_params=None,
                      reference_model: DecoderModel | None = None):
    """`sum_loss(params, inputs, rng)` for `train.make_train_step`. `inputs` holds "batch" (a
    `PreferenceBatch`), for KTO "partners" (each row's prompt with another example's response,
    {"tokens", "mask"} [B, P+R]: the pairs (x, y') whose log-ratio estimates KL(π ‖ π_ref) for
    the reference point, Ethayarajh et al. 2024, §4.1), and, when the method uses a reference,
    either "reference" (its cached `reference_logprobs`) or nothing, in which case the frozen
    `ref_params` score the batch in the step. With `reference_model` (LoRA: the same model with
    adapters off, `config.without_lora()`), the reference is that model over the policy's own
    parameters with `ref_params` (None, or initial copies of `lora.modules_to_save`) laid over
    them: the frozen base, with no second copy."""
    kto = cfg.method == "kto" and not cfg.custom
    user = None if not cfg.custom else losses.with_context(
        losses.resolve_loss(cfg.custom, "loss.custom"), model=model)

    def sum_loss(params, inputs, rng):
        batch = inputs["batch"]
        if user is None:
            logp, lengths = sequence_logprobs(model, params, batch.tokens, batch.mask,
                                              batch.prompt_len)
        ref = None
        if cfg.uses_reference:
            ref = inputs.get("reference")
            if ref is None and reference_model is not None:
                ref = reference_logprobs(reference_model, {**jax.lax.stop_gradient(params),
                                                           **(ref_params or {})},
                                         batch, inputs.get("partners"))
            elif ref is None:
                ref = reference_logprobs(model, ref_params, batch, inputs.get("partners"))
        if user is not None:
            return losses.sum_form(user(params, {**inputs, "reference": ref}, rng))
        partners = None
        if kto:  # the reference point carries no gradient
            pt = inputs["partners"]
            partners = sequence_logprobs(model, jax.lax.stop_gradient(params), pt["tokens"],
                                         pt["mask"], batch.prompt_len)[0]
        return offline_loss_sums(cfg, logp, lengths, batch, ref, partners)

    return sum_loss
