"""A reward model as a scorer of sampled responses, and as the initial critic of PPO."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from rlhf_jax.models import DecoderModel, TransformerConfig
from rlhf_jax.reward.evaluate import ensemble_statistics


@dataclasses.dataclass(frozen=True)
class reward_model_scorer:  # noqa: N801 - used like a function
    """`score_fn(reward_params, prompt_tokens, prompt_mask, response_tokens, response_mask) -> [B]`:
    the reward model's (normalised) reward of prompt + response.

    An ensemble of `num_outputs` heads scores mean_m r_m − `std_coef` · std_m r_m: the mean, or
    with `std_coef` k > 0 a conservative, uncertainty-penalised reward that makes over-optimising
    the reward model less attractive (Coste et al. 2024, "Reward Model Ensembles Help Mitigate
    Overoptimization", uncertainty-weighted optimisation; std over members, ddof 0).
    """

    config: TransformerConfig
    num_outputs: int = 1
    std_coef: float = 0.0

    def __post_init__(self):
        if self.num_outputs < 1:
            raise ValueError(f"reward_model_scorer.num_outputs={self.num_outputs}: expected >= 1")
        if self.std_coef < 0 or (self.std_coef > 0 and self.num_outputs < 2):
            raise ValueError(f"reward_model_scorer.std_coef={self.std_coef}: expected >= 0, and "
                             "> 0 only for an ensemble (num_outputs >= 2)")

    def __call__(self, reward_params, prompt_tokens, prompt_mask, response_tokens, response_mask):
        tokens = jnp.concatenate([prompt_tokens, response_tokens], axis=1)
        mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
        reward = DecoderModel(self.config, heads=("reward",),
                              num_reward_outputs=self.num_outputs).apply(
            {"params": reward_params}, tokens, mask).reward
        if reward.ndim == 1:
            return reward
        mean, std = ensemble_statistics(reward)
        return mean - self.std_coef * std


def critic_from_reward_model(reward_params) -> dict:
    """Critic parameters initialised from a reward model (Ziegler et al. 2019, §2.2; Ouyang et
    al. 2022, §3.5): its backbone, and a value head that outputs the reward model's (normalised,
    ensemble-mean) reward at every position, V(s) = mean_m gain_m·(w_m·h + b_m) + bias_m."""
    head = reward_params["reward_head"]
    gain = head["gain"].astype(jnp.float32)
    kernel = (head["proj"]["kernel"].astype(jnp.float32) * gain).mean(-1, keepdims=True)
    bias = (head["proj"]["bias"].astype(jnp.float32) * gain + head["bias"]).mean(-1,
                                                                                 keepdims=True)
    dtype = head["proj"]["kernel"].dtype
    return {"transformer": reward_params["transformer"],
            "value_head": {"kernel": kernel.astype(dtype), "bias": bias.astype(dtype)}}
