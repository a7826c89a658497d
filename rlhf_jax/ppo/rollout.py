"""Rollouts: sample responses, score them, and turn scores into per-token rewards and advantages."""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from rlhf_jax.models import DecoderModel, TransformerConfig
from rlhf_jax.ppo.advantages import gae, grpo_advantages, masked_mean, rloo_advantages, whiten
from rlhf_jax.ppo.kl import kl_estimate, token_rewards
from rlhf_jax.sampling import SamplingConfig, generate, response_logprobs


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Reward shaping and advantage settings (defaults: Huang et al. 2023, "The N Implementation
    Details of RLHF with PPO"): γ = 1, λ = 0.95, k1 KL, whitened advantages."""

    gamma: float = 1.0
    lam: float = 0.95
    kl_estimator: str = "k1"
    missing_eos_penalty: float | None = None  # score given to responses without EOS
    whiten_rewards: bool = False
    whiten_advantages: bool = True
    reward_clip: float = 0.0  # > 0: clip scores to [−c, c]
    advantage: str = "gae"  # "gae" (critic), or critic-free "rloo" / "grpo"
    group_size: int = 1  # samples per prompt for rloo / grpo, consecutive rows

    def __post_init__(self):
        if self.advantage not in ("gae", "rloo", "grpo"):
            raise ValueError(f"RolloutConfig.advantage={self.advantage!r}: expected 'gae', "
                             "'rloo' or 'grpo'")
        if self.advantage != "gae" and self.group_size < 2:
            raise ValueError(f"RolloutConfig.advantage={self.advantage!r} needs group_size >= 2 "
                             f"samples per prompt, got {self.group_size}")


@struct.dataclass
class Rollout:
    """One batch of experience; [B, N] arrays are over response tokens."""

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


@dataclasses.dataclass(frozen=True)
class reward_model_scorer:  # noqa: N801 - used like a function
    """score_fn for a reward model: its (normalised) reward of prompt + response."""

    config: TransformerConfig

    def __call__(self, reward_params, prompt_tokens, prompt_mask, response_tokens, response_mask):
        tokens = jnp.concatenate([prompt_tokens, response_tokens], axis=1)
        mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
        reward = DecoderModel(self.config, heads=("reward",)).apply(
            {"params": reward_params}, tokens, mask).reward
        return reward if reward.ndim == 1 else reward.mean(-1)


def sequence_values(params, config: TransformerConfig, prompt_tokens, prompt_mask,
                    response_tokens, response_mask):
    """V(s_t) for each response token: the value head read at the position before the token."""
    tokens = jnp.concatenate([prompt_tokens, response_tokens], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
    values = DecoderModel(config, heads=("value",)).apply({"params": params}, tokens, mask).values
    p = prompt_tokens.shape[1]
    return values[:, p - 1:-1] * response_mask


@partial(jax.jit, static_argnames=("config", "sampling", "rollout", "score_fn"))
def make_rollout(params, ref_params, score_params, prompt_tokens, prompt_mask, key, beta, *,
                 config: TransformerConfig, sampling: SamplingConfig, rollout: RolloutConfig,
                 score_fn: Callable) -> Rollout:
    """Sample with the policy, then score and compute rewards and advantages, in one program.

    `params` holds the policy backbone, LM head and value head; `score_fn(score_params,
    prompt_tokens, prompt_mask, response_tokens, response_mask) -> [B]` is the reward model
    (`reward_model_scorer`) or a programmatic reward. Rewards: −β·KL per token plus the score on
    the last real token.
    """
    sample = generate(params, prompt_tokens, prompt_mask, key, config=config, sampling=sampling)
    mask = sample.mask
    ref_logprobs = response_logprobs(ref_params, prompt_tokens, prompt_mask, sample.tokens, mask,
                                     config=config, temperature=sampling.temperature)
    values = sequence_values(params, config, prompt_tokens, prompt_mask, sample.tokens, mask)
    scores = score_fn(score_params, prompt_tokens, prompt_mask, sample.tokens, mask)
    if rollout.reward_clip > 0:
        scores = jnp.clip(scores, -rollout.reward_clip, rollout.reward_clip)
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
        group_adv = (rloo_advantages if rollout.advantage == "rloo" else grpo_advantages)(
            seq_return, rollout.group_size)
        advantages = group_adv[:, None] * mask
        values = returns = jnp.zeros_like(rewards)
    if rollout.whiten_advantages:
        advantages = whiten(advantages, mask)
    return Rollout(prompt_tokens=prompt_tokens, prompt_mask=prompt_mask,
                   response_tokens=sample.tokens, response_mask=mask, logprobs=sample.logprobs,
                   ref_logprobs=ref_logprobs, values=values, scores=scores, kl=kl,
                   rewards=rewards, advantages=advantages, returns=returns,
                   ended_with_eos=sample.ended_with_eos)


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
