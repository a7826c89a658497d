"""The reward objective's settings (a config dataclass, importable without JAX)."""
from __future__ import annotations

import dataclasses

from rlhf_jax import losses

# the acquisition functions of active learning (`reward.acquisition`)
ACQUISITIONS = ("random", "entropy", "disagreement", "bald")


@dataclasses.dataclass(frozen=True)
class RewardLossConfig:
    """Weights of the reward objective.

    Comparisons of two responses use Bradley–Terry with `margin` and `label_smoothing`; rankings of
    more use Plackett–Luce. Two robust forms of the comparison loss bound what a poisoned label
    can pull: `label_flip_rate` ε (the likelihood of a label flipped with probability ε,
    `losses.flip_likelihood_loss`) and `outlier_penalty` λ (R3M's sparse outlier terms,
    `losses.outlier_loss`; it reads labels as certain: a record's `probability` is not used). Ratings add `scalar_weight` · (r − y)². `centering_coef` adds
    (Σ_k r_k)² per comparison (Eisenstein et al. 2023). `custom` names your own loss instead:
    `fn(params, batch, rng[, model=...]) -> (loss, metrics)` or `(loss_sum, (count,
    metric_sums))` over a `PreferenceBatch` (`batch_rewards(model, params, batch)` gives the
    rewards [B, K]; `losses.custom`).
    """

    margin: float = 0.0  # Bradley-Terry margin subtracted from the reward difference
    label_smoothing: float = 0.0  # probability that a label is flipped (0 <= eps < 0.5)
    label_flip_rate: float = 0.0  # robust: labels flipped with this probability (0: off)
    outlier_penalty: float = 0.0  # robust: R3M's ℓ1 weight λ of per-example outliers (0: off)
    scalar_weight: float = 1.0  # weight of the rating regression loss
    centering_coef: float = 0.0  # weight of the (sum of rewards)^2 centering penalty
    # your own loss in place of these (module:function, file.py:function or __main__:function)
    custom: str = ""

    def __post_init__(self):
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"RewardLossConfig.label_smoothing={self.label_smoothing}: expected "
                             "0 <= ε < 0.5")
        if not 0 <= self.label_flip_rate < 0.5:
            raise ValueError(f"RewardLossConfig.label_flip_rate={self.label_flip_rate}: expected "
                             "0 <= ε < 0.5")
        if not 0 <= self.outlier_penalty < 1:
            raise ValueError(f"RewardLossConfig.outlier_penalty={self.outlier_penalty}: expected "
                             "0 <= λ < 1 (0: off)")
        if self.label_flip_rate and self.outlier_penalty:
            raise ValueError("RewardLossConfig: label_flip_rate and outlier_penalty are two "
                             "robust losses; set one of them")
        if (self.label_flip_rate or self.outlier_penalty) and (self.label_smoothing
                                                                or self.margin):
            raise ValueError("RewardLossConfig: a robust loss (label_flip_rate or "
                             "outlier_penalty) replaces the Bradley–Terry loss; label_smoothing "
                             "and margin must be 0 with it")
        if self.scalar_weight < 0 or self.centering_coef < 0:
            raise ValueError("RewardLossConfig.scalar_weight and centering_coef must be >= 0")
        if callable(self.custom):  # a function given in code: recorded by its name
            object.__setattr__(self, "custom", losses.loss_name(self.custom))
        if self.custom:  # a name that does not resolve fails here, before any work
            losses.resolve_loss(self.custom, "loss.custom")


def parse_objectives(spec: str) -> tuple[str, ...]:
    """"helpful,harmless" → ("helpful", "harmless"): a multi-objective reward model's heads
    (`reward.objectives`), distinct non-empty names."""
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    if len(set(names)) != len(names):
        raise ValueError(f"objectives={spec!r}: every name must be distinct")
    return names
