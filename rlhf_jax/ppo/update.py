"""The PPO update: epochs × minibatches as one `lax.scan` inside one jit (Schulman et al. 2017)."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax

from rlhf_jax.losses import (CustomLossError, clipped_value_loss, model_nll_sum,
                             next_token_targets, ppo_policy_loss, resolve_loss)
from rlhf_jax.models import DecoderModel, TransformerConfig
from rlhf_jax.models.logprobs import predicted_logprobs
from rlhf_jax.ppo.advantages import masked_mean
from rlhf_jax.ppo.config import PPOConfig
from rlhf_jax.ppo.rollout import Rollout, sequence_values


def policy_objective(ppo: PPOConfig):
    """The policy term: `losses.ppo_policy_loss` (Schulman et al. 2017, eq. 7), or
    `ppo.policy_loss`, a function of your own with its signature —
    `fn(logp_bt, old_logp_bt, advantages_bt, mask_bt, *, clip) -> (loss_sum, count,
    metric_sums)` over response tokens (log π now and at sampling, the advantages, the mask),
    or returning `(loss, metrics)` means (the sum is then loss × the masked token count)."""
    if not ppo.policy_loss:
        return ppo_policy_loss
    user = resolve_loss(ppo.policy_loss, "ppo.policy_loss")

    def objective(logp, old_logp, advantages, mask, *, clip):
        out = user(logp, old_logp, advantages, mask, clip=clip)
        if isinstance(out, tuple) and len(out) == 3:
            return out
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
            count = jnp.sum(mask.astype(jnp.float32))
            return out[0] * count, count, {k: v * count for k, v in out[1].items()}
        raise CustomLossError("ppo.policy_loss: return (loss_sum, count, metric_sums) or "
                              "(loss, metrics)")

    return objective


def _loss(params, mb: Rollout, ptx, *, config: TransformerConfig,
          critic_config: TransformerConfig | None, ppo: PPOConfig):
    """L = L_clip + c_v·L_V − c_H·H − γ_ptx·E_pretrain[log π] (Schulman et al. 2017, eq. 9;
    Ouyang et al. 2022, eq. 2), each a mean over response (resp. text) tokens."""
    tokens = jnp.concatenate([mb.prompt_tokens, mb.response_tokens], axis=1)
    mask = jnp.concatenate([mb.prompt_mask, mb.response_mask], axis=1)
    # values from the separate critic, the policy's value head, or none (critic-free advantages)
    shared = "critic" not in params and "value_head" in params["policy"]
    heads = ("lm", "value") if shared else ("lm",)
    chunked = config.logit_chunk > 0
    out = DecoderModel(config, heads=heads).apply({"params": params["policy"]}, tokens, mask,
                                                  skip_logits=chunked)
    p = mb.prompt_tokens.shape[1]
    rmask = mb.response_mask
    # log π at the temperature the rollout was sampled at (the ratio is 1 on unchanged weights)
    logp, token_ent = predicted_logprobs(out, params["policy"], config, mb.response_tokens, p,
                                         mb.temperature, entropy=True)
    logp = jnp.where(rmask > 0, logp, 0.0)
    if shared:
        values = out.values[:, p - 1:-1]
    elif "critic" in params:
        values = sequence_values(params["critic"], critic_config, mb.prompt_tokens,
                                 mb.prompt_mask, mb.response_tokens, rmask)
    else:
        values = mb.values
    pg_sum, count, pg_metrics = policy_objective(ppo)(logp, mb.logprobs, mb.advantages, rmask,
                                                      clip=ppo.clip)
    vf_sum, vf_count = clipped_value_loss(values, mb.values, mb.returns, rmask,
                                          clip=ppo.value_clip)
    entropy = masked_mean(token_ent, rmask)
    # the policy term over its own count (a custom objective may count sequences, not tokens);
    # the value term always over response tokens
    denom, vf_denom = jnp.maximum(count, 1.0), jnp.maximum(vf_count, 1.0)
    loss = pg_sum / denom + ppo.value_coef * vf_sum / vf_denom - ppo.entropy_coef * entropy
    metrics = {"ppo/policy_loss": pg_sum / denom, "ppo/value_loss": vf_sum / vf_denom,
               "ppo/entropy": entropy,
               **{k: v / denom for k, v in pg_metrics.items()}}
    if ptx is not None:
        text = DecoderModel(config, heads=("lm",)).apply(
            {"params": params["policy"]}, ptx["tokens"], ptx["mask"], skip_logits=chunked)
        targets = next_token_targets(ptx["mask"])
        if "loss_mask" in ptx:  # the texts' learnt tokens (all of a plain text)
            targets = targets * ptx["loss_mask"]
        nll_sum, n = model_nll_sum(text, params["policy"], config, ptx["tokens"], targets)
        ptx_nll = nll_sum / jnp.maximum(n, 1.0)
        loss = loss + ppo.ptx_coef * ptx_nll
        metrics["ppo/ptx_nll"] = ptx_nll
    return loss, metrics


@partial(jax.jit, static_argnames=("config", "critic_config", "ppo", "tx"),
         donate_argnums=(0, 1))
def ppo_update(params, opt_state, rollout: Rollout, key, ptx_batch=None, frozen=None, *,
               config: TransformerConfig, ppo: PPOConfig, tx: optax.GradientTransformation,
               critic_config: TransformerConfig | None = None):
    """Run `epochs` passes of `num_minibatches` shuffled minibatches; return params, opt state
    and the metrics averaged over all minibatch steps.

    `params` is {"policy": ...} (with a value head on the policy backbone, or without one for
    critic-free advantages) or {"policy": ..., "critic": ...} (a separate critic with
    `critic_config`); one optimiser updates both.
    `ptx_batch` ({"tokens", "mask"} [M, T], M divisible by num_minibatches) is the PPO-ptx
    text: minibatch i of every epoch uses its i-th slice.
    `frozen` holds the leaves `tx` (a `train.Optimizer` with a freeze rule, e.g. LoRA's base)
    does not train, with None at the trainable ones, which `params` then holds (see
    `Optimizer.split`): they are read, not differentiated, and not donated, so arrays shared
    with the reference or the reward model stay valid. Returns the trainable part only.
    """
    if "policy" not in params:
        raise ValueError("params must be {'policy': ...} or {'policy': ..., 'critic': ...}; got "
                         f"keys {sorted(params)}")
    if frozen is not None and not getattr(tx, "freezes", False):
        raise ValueError("frozen leaves were passed, but tx freezes nothing")
    b, nm = rollout.response_tokens.shape[0], ppo.num_minibatches
    if b % nm:
        raise ValueError(f"rollout batch {b} is not divisible by num_minibatches={nm}")
    if (ptx_batch is None) != (ppo.ptx_coef == 0):
        raise ValueError(f"ptx_coef={ppo.ptx_coef} needs a ptx_batch (and a ptx_batch needs "
                         "ptx_coef > 0)")
    if ptx_batch is not None:
        m = ptx_batch["tokens"].shape[0]
        if m % nm:
            raise ValueError(f"ptx batch {m} is not divisible by num_minibatches={nm}")
        ptx_chunks = jax.tree.map(lambda x: x.reshape(nm, m // nm, *x.shape[1:]), ptx_batch)
    mb_size = b // nm
    loss_fn = partial(_loss, config=config, critic_config=critic_config, ppo=ppo)

    def full(t):
        return t if frozen is None else tx.merge(t, frozen)
    grad_fn = jax.value_and_grad(lambda t, mb, ptx: loss_fn(full(t), mb, ptx), has_aux=True)

    def minibatch_step(carry, xs):
        trainable, opt_state = carry
        idx, i = xs
        mb = jax.tree.map(lambda x: x[idx], rollout)
        ptx = None if ptx_batch is None else jax.tree.map(lambda x: x[i], ptx_chunks)
        (loss, metrics), grads = grad_fn(trainable, mb, ptx)
        updates, opt_state = tx.update(grads, opt_state, full(trainable))
        return (optax.apply_updates(trainable, updates), opt_state), {**metrics,
                                                                     "ppo/loss": loss}

    def epoch(carry, epoch_key):
        order = jax.random.permutation(epoch_key, b).reshape(nm, mb_size)
        return jax.lax.scan(minibatch_step, carry, (order, jnp.arange(nm)))

    keys = jax.random.split(key, ppo.epochs)
    (params, opt_state), metrics = jax.lax.scan(epoch, (params, opt_state), keys)
    return params, opt_state, jax.tree.map(jnp.mean, metrics)
