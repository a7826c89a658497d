"""PPO's settings: rollout shaping, the KL controller and the update (config dataclasses,
importable without JAX)."""
from __future__ import annotations

import dataclasses

from rlhf_jax.losses.custom import loss_name, resolve_loss


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Reward shaping and advantage settings (defaults: Huang et al. 2023, "The N Implementation
    Details of RLHF with PPO"): γ = 1, λ = 0.95, k1 KL, whitened advantages."""

    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    kl_estimator: str = "k1"  # per-token KL estimate: k1 | k2 | k3
    missing_eos_penalty: float | None = None  # score given to responses without EOS
    whiten_rewards: bool = False  # rescale per-token rewards to unit variance (mean kept)
    # whiten advantages over the batch's tokens; None: yes for GAE, no for the critic-free
    # estimators, whose per-sequence advantages are already centred within each group (token
    # whitening would weight long responses more and can flip the sign of a group's winner)
    whiten_advantages: bool | None = None
    reward_clip: float = 0.0  # > 0: clip scores to [−c, c]
    advantage: str = "gae"  # "gae" (critic), or critic-free "rloo" / "grpo"
    group_size: int = 1  # samples per prompt for rloo / grpo, consecutive rows
    group_std_ddof: int = 1  # GRPO's group std: 1 = sample std (GRPO code, TRL), 0 = population

    @property
    def whitens_advantages(self) -> bool:
        """Whether advantages are whitened over tokens (resolving the None default)."""
        if self.whiten_advantages is None:
            return self.advantage == "gae"
        return self.whiten_advantages

    def __post_init__(self):
        if self.advantage not in ("gae", "rloo", "grpo"):
            raise ValueError(f"RolloutConfig.advantage={self.advantage!r}: expected 'gae', "
                             "'rloo' or 'grpo'")
        if self.advantage != "gae" and self.group_size < 2:
            raise ValueError(f"RolloutConfig.advantage={self.advantage!r} needs group_size >= 2 "
                             f"samples per prompt, got {self.group_size}")
        if self.group_std_ddof not in (0, 1):
            raise ValueError(f"RolloutConfig.group_std_ddof={self.group_std_ddof}: expected 0 or 1")


@dataclasses.dataclass(frozen=True)
class KLConfig:
    """β: "fixed", or "adaptive" toward `target` nats per sequence over `horizon` samples
    (Ziegler et al. 2019, §2.2)."""

    controller: str = "fixed"  # fixed or adaptive beta
    beta: float = 0.05  # KL penalty coefficient (the adaptive controller's start)
    target: float = 6.0  # adaptive: KL per sequence to aim for, nats
    horizon: float = 10000.0  # adaptive: samples over which beta moves by at most 20%

    def __post_init__(self):
        if self.controller not in ("fixed", "adaptive"):
            raise ValueError(f"KLConfig.controller={self.controller!r}: expected 'fixed' or "
                             "'adaptive'")
        if self.beta < 0 or self.target <= 0 or self.horizon <= 0:
            raise ValueError(f"KLConfig: expected beta >= 0, target > 0, horizon > 0; got {self}")


@dataclasses.dataclass(frozen=True)
class ConstraintConfig:
    """A cost the policy must keep on average at most `limit` (`ppo.constraint`): `cost` names
    a text scorer (e.g. "profanity", the packaged classifier's probability) or
    "objective:<name>", the negative of a multi-objective reward model's head (e.g.
    "objective:harmless" with limit −0.5 keeps the mean normalised harmlessness ≥ 0.5); empty:
    off. The score becomes r − λ·cost with λ learned from `multiplier` at rate `lr` (on ln λ)."""

    # a text scorer (eval.TEXT_TERMS) or objective:<name> (minus that head); empty: off
    cost: str = ""
    limit: float = 0.05  # d: the largest mean cost allowed
    multiplier: float = 1.0  # λ at the start (> 0)
    lr: float = 0.5  # step size of ln λ per iteration, per unit of violation

    def __post_init__(self):
        if self.multiplier <= 0 or self.lr <= 0:
            raise ValueError(f"constraint: expected multiplier > 0 and lr > 0; got {self}")
        if self.cost.startswith("objective:") and not self.cost[len("objective:"):]:
            raise ValueError("constraint.cost='objective:': name the objective "
                             "(objective:harmless)")

    @property
    def enabled(self) -> bool:
        """Whether a cost is constrained."""
        return bool(self.cost)


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Update hyper-parameters (defaults: Huang et al. 2023). `ptx_coef` > 0 adds the
    pretraining log-likelihood term of PPO-ptx (Ouyang et al. 2022, eq. 2). `policy_loss` names
    an objective of your own in place of PPO's clipped surrogate (`policy_objective`)."""

    epochs: int = 4  # passes over each rollout
    num_minibatches: int = 1  # minibatches per epoch
    clip: float = 0.2  # policy ratio clip epsilon
    value_clip: float = 0.2  # value change clip around the rollout's values
    value_coef: float = 0.1  # weight of the value loss
    entropy_coef: float = 0.0  # weight of the entropy bonus
    ptx_coef: float = 0.0  # weight of the pretraining NLL (PPO-ptx; 0: off)
    # your own policy objective in place of the clipped surrogate (module:function,
    # file.py:function or __main__:function; see `policy_objective`)
    policy_loss: str = ""

    def __post_init__(self):
        if callable(self.policy_loss):  # a function given in code: recorded by its name
            object.__setattr__(self, "policy_loss", loss_name(self.policy_loss))
        if self.policy_loss:  # a name that does not resolve fails here, before any work
            resolve_loss(self.policy_loss, "ppo.policy_loss")
