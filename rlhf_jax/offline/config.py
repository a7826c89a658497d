"""The offline methods, the record kinds each reads, and their settings (importable without
JAX)."""
from __future__ import annotations

import dataclasses

from rlhf_jax import losses


PAIRWISE = ("dpo", "cdpo", "rdpo", "ipo", "simpo", "orpo")
METHODS = PAIRWISE + ("kto", "awr", "filtered_bc")
# the record kinds each method can learn from (see `offline.objective`'s docstring)
METHOD_KINDS = {**{m: ("pairwise", "ranking") for m in PAIRWISE},
                "kto": ("binary", "pairwise", "ranking"),
                "awr": ("rating", "binary", "pairwise", "ranking"),
                "filtered_bc": ("rating", "binary", "pairwise", "ranking")}
# methods whose loss compares the policy with a frozen reference
USES_REFERENCE = ("dpo", "cdpo", "rdpo", "ipo", "kto")


@dataclasses.dataclass(frozen=True)
class OfflineLossConfig:
    """The method and its hyperparameters.

    `beta`: DPO/cDPO/rDPO/IPO/KTO's β (SimPO's β is `simpo_beta`); `label_smoothing`: cDPO and
    robust DPO's ε; `gamma`: SimPO's target margin; `orpo_lambda`: ORPO's λ; `temperature` and
    `max_weight`: AWR's τ and weight clip; `top_fraction`: filtered BC's kept share of each
    batch; `desirable_weight` / `undesirable_weight`: KTO's λ_D / λ_U. `custom` names your
    own loss in place of the method's: `fn(params, inputs, rng[, model=...]) -> (loss,
    metrics)` or `(loss_sum, (count, metric_sums))`, where `inputs` is what the DPO family
    reads — {"batch": `PreferenceBatch`, "reference": {"responses": the reference policy's
    log-prob sums [B, K]}} — and `sequence_logprobs(model, params, tokens, mask, prompt_len)`
    gives the policy's (`losses.custom`).
    """

    method: str = "dpo"  # dpo | cdpo | rdpo | ipo | simpo | orpo | kto | awr | filtered_bc
    beta: float = 0.1  # KL strength of DPO / cDPO / rDPO / IPO / KTO
    label_smoothing: float = 0.1  # cdpo / rdpo: probability that a label is flipped
    simpo_beta: float = 2.0  # SimPO's reward scale
    gamma: float = 0.5  # SimPO's target reward margin
    orpo_lambda: float = 0.1  # ORPO: weight of the odds-ratio term
    temperature: float = 1.0  # AWR: advantage temperature τ
    max_weight: float = 20.0  # AWR: weight clip
    top_fraction: float = 0.5  # filtered BC: share of each batch kept (by reward)
    desirable_weight: float = 1.0  # KTO's λ_D
    undesirable_weight: float = 1.0  # KTO's λ_U
    # your own loss in place of the method's (module:function, file.py:function or
    # __main__:function); the reference's log-probs are cached for it as for DPO
    custom: str = ""

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: expected one of {', '.join(METHODS)}")
        checks = (("beta", self.beta > 0), ("simpo_beta", self.simpo_beta > 0),
                  ("orpo_lambda", self.orpo_lambda >= 0), ("temperature", self.temperature > 0),
                  ("max_weight", self.max_weight > 0),
                  ("top_fraction", 0 < self.top_fraction <= 1),
                  ("desirable_weight", self.desirable_weight > 0),
                  ("undesirable_weight", self.undesirable_weight > 0),
                  ("label_smoothing", 0 <= self.label_smoothing < 0.5))
        for name, ok in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)} is out of range (beta, "
                                 "simpo_beta, temperature, max_weight, KTO weights > 0; "
                                 "orpo_lambda >= 0; 0 < top_fraction <= 1; 0 <= "
                                 "label_smoothing < 0.5)")
        if callable(self.custom):  # a function given in code: recorded by its name
            object.__setattr__(self, "custom", losses.loss_name(self.custom))
        if self.custom:  # a name that does not resolve fails here, before any work
            losses.resolve_loss(self.custom, "loss.custom")

    @property
    def uses_reference(self) -> bool:
        """Whether the loss reads the reference policy's log-probabilities (a custom loss gets
        them)."""
        return bool(self.custom) or self.method in USES_REFERENCE


def check_method_kind(method: str, kind: str, where: str = "data.kind") -> None:
    """Refuse a record kind the method cannot learn from, naming the kinds it accepts."""
    if kind not in METHOD_KINDS[method]:
        raise ValueError(f"{where}={kind!r}: method {method!r} learns from "
                         f"{' | '.join(METHOD_KINDS[method])} records")
