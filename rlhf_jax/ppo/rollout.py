"""Rollouts: sample responses, score them, and turn scores into per-token rewards and advantages."""
from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rlhf_jax.models import DecoderModel, TransformerConfig, response_logprobs
from rlhf_jax.ppo.config import RolloutConfig
from rlhf_jax.ppo.advantages import gae, grpo_advantages, masked_mean, rloo_advantages, whiten
from rlhf_jax.ppo.kl import kl_estimate, token_rewards
from rlhf_jax.sampling import SampleOutput, SamplingConfig, generate


@struct.dataclass
class Rollout:
    """One batch of experience; [B, N] arrays are over response tokens.

    `temperature` is the sampling temperature at which `logprobs` (and `ref_logprobs`) were
    computed; the PPO update recomputes log π at this same temperature, so its importance ratio
    is 1 (up to float32 rounding) on the weights that sampled: there is no second setting.
    """

    prompt_tokens: jax.Array
    prompt_mask: jax.Array
    response_tokens: jax.Array
    response_mask: jax.Array
    logprobs: jax.Array
    ref_logprobs: jax.Array
    values: jax.Array
    scores: jax.Array
    kl: jax.Array
    rewards: jax.Array
    advantages: jax.Array
    returns: jax.Array
    ended_with_eos: jax.Array
    temperature: float = struct.field(pytree_node=False, kw_only=True)


def sequence_values(params, config: TransformerConfig, prompt_tokens, prompt_mask,
                    response_tokens, response_mask):
    """V(s_t) for each response token: the value head read at the position before the token."""
    tokens = jnp.concatenate([prompt_tokens, response_tokens], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
    values = DecoderModel(config, heads=("value",)).apply({"params": params}, tokens, mask).values
    p = prompt_tokens.shape[1]
    return values[:, p - 1:-1] * response_mask


def _values(params, config, critic_config, *seq):
    """Values from the separate critic (`params["critic"]`) or the policy's value head."""
    if "critic" in params:
        if critic_config is None:
            raise ValueError("params has a 'critic' entry: pass its critic_config")
        return sequence_values(params["critic"], critic_config, *seq)
    return sequence_values(params["policy"], config, *seq)


@partial(jax.jit, static_argnames=("config", "critic_config", "temperature", "score_fn",
                                   "with_values"))
def score_responses(params, ref_params, score_params, prompt_tokens, prompt_mask,
                    response_tokens, response_mask, *, config: TransformerConfig,
                    critic_config: TransformerConfig | None, temperature: float,
                    score_fn: Callable, with_values: bool = True):
    """(reference log-probs [B, N], values [B, N], scores [B]) of sampled responses, in one jit.

    `params` is {"policy": ...} (its value head is the critic) or {"policy": ..., "critic": ...};
    `ref_params` is laid over the policy's weights (`{**policy, **ref_params}`): a full copy,
    or with LoRA None or the initial copies of the modules that train in full, so that the
    reference is the policy's own base read with adapters off (Hu et al. 2022: no second copy);
    `score_fn(score_params, prompt_tokens, prompt_mask, response_tokens, response_mask) -> [B]`
    is the reward model (`reward.reward_model_scorer`) or a programmatic reward. Without
    `with_values` (critic-free advantages) the values are zeros.
    """
    seq = (prompt_tokens, prompt_mask, response_tokens, response_mask)
    # the reference is read with adapters off: with LoRA it is the policy's own base weights
    ref = {**params["policy"], **(ref_params or {})}
    ref_logprobs = response_logprobs(ref, *seq, config=config.without_lora(),
                                     temperature=temperature)
    values = (_values(params, config, critic_config, *seq) if with_values
              else jnp.zeros(response_tokens.shape, jnp.float32))
    return ref_logprobs, values, score_fn(score_params, *seq)


@partial(jax.jit, static_argnames=("rollout", "temperature"))
def finish_rollout(sample: SampleOutput, prompt_tokens, prompt_mask, ref_logprobs, values,
                   scores, beta, *, rollout: RolloutConfig, temperature: float) -> Rollout:
    """Scores → per-token rewards (−β·KL plus the score on the last token) → advantages.

    `temperature` is the one at which `sample.logprobs` and `ref_logprobs` were computed.
    """
    mask = sample.mask
    if rollout.missing_eos_penalty is not None:
        scores = jnp.where(sample.ended_with_eos, scores, rollout.missing_eos_penalty)
    kl = kl_estimate(sample.logprobs, ref_logprobs, rollout.kl_estimator) * mask
    rewards = token_rewards(scores, kl, mask, beta)
    if rollout.whiten_rewards:
        rewards = whiten(rewards, mask, shift_mean=False)
    if rollout.advantage == "gae":
        advantages, returns = gae(rewards, values, mask, gamma=rollout.gamma, lam=rollout.lam)
    else:
        # Critic-free: the sequence return R = score − β·Σ kl, baselined within each prompt's
        # group, is the advantage of every token of the response (as in TRL's RLOO trainer).
        seq_return = jnp.sum(rewards, axis=1)
        if rollout.advantage == "rloo":
            group_adv = rloo_advantages(seq_return, rollout.group_size)
        else:
            group_adv = grpo_advantages(seq_return, rollout.group_size,
                                        ddof=rollout.group_std_ddof)
        advantages = group_adv[:, None] * mask
        values = returns = jnp.zeros_like(rewards)
    if rollout.whitens_advantages:
        advantages = whiten(advantages, mask)
    return Rollout(prompt_tokens=prompt_tokens, prompt_mask=prompt_mask,
                   response_tokens=sample.tokens, response_mask=mask, logprobs=sample.logprobs,
                   ref_logprobs=ref_logprobs, values=values, scores=scores, kl=kl,
                   rewards=rewards, advantages=advantages, returns=returns,
                   ended_with_eos=sample.ended_with_eos, temperature=temperature)


@dataclasses.dataclass(frozen=True)
class RewardTerm:
    """An extra reward term added to the score with a weight: `fn(prompt_tokens, prompt_mask,
    response_tokens, response_mask) -> [B]` (the signature of a score_fn) runs on the host on
    NumPy arrays, so it may decode text (see `text_reward_term`)."""

    name: str
    weight: float
    fn: Callable


def text_reward_term(name: str, weight: float, tokenizer, fn: Callable[[str, str], float]):
    """A `RewardTerm` from a function of (prompt text, response text), e.g. a length or
    repetition penalty, or a classifier outside JAX."""

    def term(prompt_tokens, prompt_mask, response_tokens, response_mask):
        out = []
        for p, pm, r, rm in zip(prompt_tokens, prompt_mask, response_tokens, response_mask):
            out.append(fn(tokenizer.decode(p[pm > 0], skip_special_tokens=True),
                          tokenizer.decode(r[rm > 0], skip_special_tokens=True)))
        return np.asarray(out, np.float32)

    return RewardTerm(name, weight, term)


def make_rollout(params, ref_params, score_params, prompt_tokens, prompt_mask, key, beta, *,
                 config: TransformerConfig, sampling: SamplingConfig, rollout: RolloutConfig,
                 score_fn: Callable, critic_config: TransformerConfig | None = None,
                 reward_terms: Sequence[RewardTerm] = (), cost: RewardTerm | None = None,
                 cost_multiplier=0.0, stats: dict | None = None) -> Rollout:
    """Sample with the policy, score, and compute rewards and advantages.

    Three jitted programs — `generate`, `score_responses`, `finish_rollout` — with the host in
    between only when `reward_terms` need it. The score is the (clipped) `score_fn` plus
    Σ weight·term, minus `cost_multiplier`·cost for a constrained `cost` term
    (`ppo.constraint`); responses without EOS get `missing_eos_penalty` instead. When `stats`
    is a dict, the seconds spent generating and scoring, the mean raw score, each term's mean
    and the mean cost ("constraint/cost") are recorded in it (timing synchronises).
    """
    if "policy" not in params:
        raise ValueError("params must be {'policy': ...} or {'policy': ..., 'critic': ...}; got "
                         f"keys {sorted(params)}")
    clock = time.perf_counter()
    sample = generate(params["policy"], prompt_tokens, prompt_mask, key, config=config,
                      sampling=sampling)
    if stats is not None:
        jax.block_until_ready(sample.tokens)
        now = time.perf_counter()
        stats["time/generate"] = stats.get("time/generate", 0.0) + now - clock
        clock = now
    ref_logprobs, values, scores = score_responses(
        params, ref_params, score_params, prompt_tokens, prompt_mask, sample.tokens, sample.mask,
        config=config, critic_config=critic_config, temperature=sampling.temperature,
        score_fn=score_fn, with_values=rollout.advantage == "gae")
    if stats is not None:
        stats["score/reward_model"] = float(jnp.mean(scores))
    if rollout.reward_clip > 0:
        scores = jnp.clip(scores, -rollout.reward_clip, rollout.reward_clip)
    if reward_terms or cost is not None:
        host = jax.device_get((prompt_tokens, prompt_mask, sample.tokens, sample.mask))
        total = np.asarray(scores, np.float32)
        for term in reward_terms:
            value = np.asarray(term.fn(*host), np.float32)
            if value.shape != total.shape:
                raise ValueError(f"reward term {term.name!r} returned shape {value.shape}; "
                                 f"expected {total.shape}")
            total = total + term.weight * value
            if stats is not None:
                stats[f"reward_terms/{term.name}"] = float(value.mean())
        if cost is not None:  # the Lagrangian's r − λ·c (Dai et al. 2023, eq. 9)
            value = np.asarray(cost.fn(*host), np.float32)
            total = total - np.float32(cost_multiplier) * value
            if stats is not None:
                stats["constraint/cost"] = float(value.mean())
        scores = jax.device_put(total, scores.sharding)
    if stats is not None:
        jax.block_until_ready(scores)
        stats["time/score"] = stats.get("time/score", 0.0) + time.perf_counter() - clock
    return finish_rollout(sample, prompt_tokens, prompt_mask, ref_logprobs, values, scores,
                          beta, rollout=rollout, temperature=sampling.temperature)


def rollout_metrics(ro: Rollout, beta) -> dict:
    """Per-iteration statistics of a rollout (scalars, still on the device)."""
    mask = ro.response_mask.astype(jnp.float32)
    returns, values = ro.returns, ro.values
    resid_var = masked_mean(jnp.square(returns - values - masked_mean(returns - values, mask)),
                            mask)
    ret_var = masked_mean(jnp.square(returns - masked_mean(returns, mask)), mask)
    return {"score/mean": ro.scores.mean(), "score/std": ro.scores.std(),
            "kl/sequence": jnp.sum(ro.kl, axis=1).mean(), "kl/beta": jnp.asarray(beta),
            "response/length": mask.sum(1).mean(),
            "response/eos_fraction": ro.ended_with_eos.mean(),
            "value/explained_variance": 1.0 - resid_var / jnp.maximum(ret_var, 1e-8)}
