"""What scores a sampled response besides the policy: the reward model's score (one head, an
ensemble's pessimistic mean, or a multi-objective model's weighted heads), the constraint's
cost, and the host-side text terms. PPO, online DPO, best-of-n and the evaluations read them."""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from rlhf_jax import eval as rl_eval, ppo, reward
from rlhf_jax.models import TransformerConfig
from rlhf_jax.stages.configs.ppo import PPOStageConfig
from rlhf_jax.train import ConfigError


def reward_scorer(config: TransformerConfig, num_outputs: int, objectives: Sequence[str] = (),
                  std_coef: float = 0.0, objective_weights: str = "") \
        -> reward.reward_model_scorer:
    """A reward model's score: one head; an ensemble's mean − std_coef·std; or a
    multi-objective model's Σ λ_k r_k by `objective_weights` ("name=weight,…"; default equal
    weights 1/K)."""
    if objective_weights and not objectives:
        raise ConfigError(f"objective_weights={objective_weights!r}: the reward model has no "
                          "named objectives (train it with --config.objectives)")
    if not objectives:
        return reward.reward_model_scorer(config, num_outputs, std_coef)
    if std_coef:
        raise ConfigError(f"reward_std_coef={std_coef}: the reward model's heads are "
                          f"objectives {list(objectives)}, not an ensemble")
    try:
        weights = (reward.objective_weights(objective_weights, objectives) if objective_weights
                   else np.full(len(objectives), 1 / len(objectives), np.float32))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return reward.reward_model_scorer(config, num_outputs,
                                      weights=tuple(float(x) for x in weights))


def cost_term(cfg: PPOStageConfig, tokenizer, reward_config: TransformerConfig,
              reward_outputs: int, objectives: Sequence[str], reward_params):
    """`cfg.constraint`'s cost as a host-side `ppo.RewardTerm` on (prompt, response) tokens
    (None without a constraint): a text scorer (`eval.TEXT_TERMS`), or minus a multi-objective
    reward model's head ("objective:<name>"). PPO's Lagrangian and constrained best-of-n
    (`eval.evaluate_best_of_n`) both read it."""
    name = cfg.constraint.cost
    if not name:
        return None
    if not name.startswith("objective:"):
        return ppo.text_reward_term(name, 0.0, tokenizer, rl_eval.TEXT_TERMS[name])
    objective = name[len("objective:"):]
    if objective not in objectives:
        raise ConfigError(f"constraint.cost={name!r}: the reward model at {cfg.reward_dir} has "
                          f"objectives {list(objectives) or 'none'}")
    head = list(objectives).index(objective)
    members = jax.jit(reward.reward_model_scorer(reward_config, reward_outputs).members)

    def minus_head(prompt_tokens, prompt_mask, response_tokens, response_mask):
        out = members(reward_params, prompt_tokens, prompt_mask, response_tokens,
                      response_mask)
        return -np.asarray(jax.device_get(out), np.float32)[:, head]

    return ppo.RewardTerm(name, 0.0, minus_head)


def reward_terms(cfg: PPOStageConfig, tokenizer) -> tuple:
    """PPO's host-side text terms: `cfg.reward_terms` by their weights, and the scorers of
    `cfg.monitor_terms` with weight 0 (logged, not added)."""
    terms = tuple(ppo.text_reward_term(name, float(weight), tokenizer, rl_eval.TEXT_TERMS[name])
                  for name, weight in cfg.reward_terms.items() if weight)
    return terms + tuple(ppo.text_reward_term(name, 0.0, tokenizer, rl_eval.TEXT_TERMS[name])
                         for name in filter(None, cfg.monitor_terms.split(",")))
