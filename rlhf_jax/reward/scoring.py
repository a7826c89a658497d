"""A reward model as a scorer of sampled responses, and as the initial critic of PPO."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from rlhf_jax.models import DecoderModel, TransformerConfig, last_token_index
from rlhf_jax.reward.evaluate import ensemble_statistics


@dataclasses.dataclass(frozen=True)
class reward_model_scorer:  # noqa: N801 - used like a function
    """`score_fn(reward_params, prompt_tokens, prompt_mask, response_tokens, response_mask) -> [B]`:
    the reward model's (normalised) reward of prompt + response. With `weights`, a
    multi-objective model's heads are combined as Σ_k λ_k r_k (`reward.objectives`).

    An ensemble of `num_outputs` heads scores mean_m r_m − `std_coef` · std_m r_m: the mean, or
    with `std_coef` k > 0 a conservative, uncertainty-penalised reward that makes over-optimising
    the reward model less attractive (Coste et al. 2024, "Reward Model Ensembles Help Mitigate
    Overoptimization", uncertainty-weighted optimisation; std over members, ddof 0).
    """

    config: TransformerConfig
    num_outputs: int = 1
    std_coef: float = 0.0
    # a multi-objective reward model's heads combined as Σ_k λ_k r_k (`reward.objectives`);
    # empty: the heads are an ensemble (their mean)
    weights: tuple = ()

    def __post_init__(self):
        if self.weights and (len(self.weights) != self.num_outputs or self.std_coef):
            raise ValueError(f"reward_model_scorer.weights={self.weights}: expected one weight "
                             f"per head ({self.num_outputs}) and std_coef 0")
        if self.num_outputs < 1:
            raise ValueError(f"reward_model_scorer.num_outputs={self.num_outputs}: expected >= 1")
        if self.std_coef < 0 or (self.std_coef > 0 and self.num_outputs < 2):
            raise ValueError(f"reward_model_scorer.std_coef={self.std_coef}: expected >= 0, and "
                             "> 0 only for an ensemble (num_outputs >= 2)")

    def _forward(self, reward_params, prompt_tokens, prompt_mask, response_tokens,
                 response_mask):
        """The reward model's output on prompt + response, and the joined mask."""
        tokens = jnp.concatenate([prompt_tokens, response_tokens], axis=1)
        mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
        out = DecoderModel(self.config, heads=("reward",),
                           num_reward_outputs=self.num_outputs).apply(
            {"params": reward_params}, tokens, mask)
        return out, mask

    def members(self, reward_params, prompt_tokens, prompt_mask, response_tokens,
                response_mask):
        """Every head's reward of prompt + response: [B, M] (M = 1 for a single head)."""
        reward = self._forward(reward_params, prompt_tokens, prompt_mask, response_tokens,
                               response_mask)[0].reward
        return reward.reshape(reward.shape[0], -1)

    def members_and_features(self, reward_params, prompt_tokens, prompt_mask, response_tokens,
                             response_mask):
        """(every head's reward [B, M], the final hidden state at the last real token [B, D],
        the vector the heads read) from one forward pass: the features of an embedding-space
        batch selection (`acquisition.select_diverse`)."""
        out, mask = self._forward(reward_params, prompt_tokens, prompt_mask, response_tokens,
                                  response_mask)
        idx_b = last_token_index(mask)
        last_bd = jnp.take_along_axis(out.hidden, idx_b[:, None, None], axis=1)[:, 0]
        return out.reward.reshape(out.reward.shape[0], -1), last_bd

    def score_and_spread(self, reward_params, *seq):
        """(score [B], ensemble std [B], 0 for one head) from one forward pass."""
        members = self.members(reward_params, *seq)
        if self.weights:  # objectives: their weighted sum, no spread
            score = members @ jnp.asarray(self.weights, members.dtype)
            return score, jnp.zeros_like(score)
        if self.num_outputs == 1:
            return members[:, 0], jnp.zeros(members.shape[:1], members.dtype)
        mean, std = ensemble_statistics(members)
        return mean - self.std_coef * std, std

    def __call__(self, reward_params, prompt_tokens, prompt_mask, response_tokens, response_mask):
        return self.score_and_spread(reward_params, prompt_tokens, prompt_mask, response_tokens,
                                     response_mask)[0]


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
