"""The PPO update: epochs × minibatches as one `lax.scan` inside one jit (Schulman et al. 2017)."""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import optax

from rlhf_jax.losses import clipped_value_loss, ppo_policy_loss, token_entropy
from rlhf_jax.models import DecoderModel, TransformerConfig
from rlhf_jax.ppo.advantages import masked_mean
from rlhf_jax.ppo.rollout import Rollout


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Update hyper-parameters (defaults: Huang et al. 2023)."""

    epochs: int = 4
    num_minibatches: int = 1
    clip: float = 0.2
    value_clip: float = 0.2
    value_coef: float = 0.1
    entropy_coef: float = 0.0
    temperature: float = 1.0


def _loss(params, mb: Rollout, *, config: TransformerConfig, ppo: PPOConfig):
    tokens = jnp.concatenate([mb.prompt_tokens, mb.response_tokens], axis=1)
    mask = jnp.concatenate([mb.prompt_mask, mb.response_mask], axis=1)
    out = DecoderModel(config, heads=("lm", "value")).apply({"params": params}, tokens, mask)
    p = mb.prompt_tokens.shape[1]
    logits = out.logits[:, p - 1:-1] / ppo.temperature
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(logp_all, mb.response_tokens[..., None], axis=-1)[..., 0]
    values = out.values[:, p - 1:-1]
    rmask = mb.response_mask
    pg_sum, count, pg_metrics = ppo_policy_loss(logp, mb.logprobs, mb.advantages, rmask,
                                                clip=ppo.clip)
    vf_sum, _ = clipped_value_loss(values, mb.values, mb.returns, rmask, clip=ppo.value_clip)
    entropy = masked_mean(token_entropy(out.logits[:, p - 1:-1], ppo.temperature), rmask)
    denom = jnp.maximum(count, 1.0)
    loss = pg_sum / denom + ppo.value_coef * vf_sum / denom - ppo.entropy_coef * entropy
    metrics = {"ppo/policy_loss": pg_sum / denom, "ppo/value_loss": vf_sum / denom,
               "ppo/entropy": entropy, "ppo/clipfrac": pg_metrics["ppo/clipfrac"] / denom,
               "ppo/approx_kl": pg_metrics["ppo/approx_kl"] / denom}
    return loss, metrics


@partial(jax.jit, static_argnames=("config", "ppo", "tx"), donate_argnums=(0, 1))
def ppo_update(params, opt_state, rollout: Rollout, key, *, config: TransformerConfig,
               ppo: PPOConfig, tx: optax.GradientTransformation):
    """Run `epochs` passes of `num_minibatches` shuffled minibatches; return params, opt state
    and the metrics averaged over all minibatch steps."""
    b = rollout.response_tokens.shape[0]
    if b % ppo.num_minibatches:
        raise ValueError(f"rollout batch {b} is not divisible by num_minibatches="
                         f"{ppo.num_minibatches}")
    mb_size = b // ppo.num_minibatches
    grad_fn = jax.value_and_grad(partial(_loss, config=config, ppo=ppo), has_aux=True)

    def minibatch_step(carry, idx):
        params, opt_state = carry
        mb = jax.tree.map(lambda x: x[idx], rollout)
        (loss, metrics), grads = grad_fn(params, mb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {**metrics, "ppo/loss": loss}

    def epoch(carry, epoch_key):
        order = jax.random.permutation(epoch_key, b).reshape(ppo.num_minibatches, mb_size)
        return jax.lax.scan(minibatch_step, carry, order)

    keys = jax.random.split(key, ppo.epochs)
    (params, opt_state), metrics = jax.lax.scan(epoch, (params, opt_state), keys)
    return params, opt_state, jax.tree.map(jnp.mean, metrics)
