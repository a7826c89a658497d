"""A cost constraint that the reward cannot buy off: maximise E[reward] subject to E[cost] ≤ d,
by the Lagrangian min_{λ≥0} max_π E[r] − λ·(E[c] − d) (Safe RLHF, Dai et al. 2023, eqs. 9–10;
Altman 1999). Each iteration the policy is trained on the score r − λ·c, and the multiplier
follows the constraint's violation by gradient ascent on ln λ,

    ln λ ← ln λ + η·(Ĵ_c − d),   Ĵ_c = the iteration's mean cost,

so λ grows while the mean cost exceeds the limit d and decays once it is met (λ > 0 always).
Safe RLHF's own code also keeps ln λ, but steps it with Adam on −λ·(Ĵ_c − d); this plain step
on ln λ is a variant of it."""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp


class LagrangeState(NamedTuple):
    """ln λ of the cost constraint (a pytree the checkpoint saves)."""

    log_lambda: jnp.ndarray

    @property
    def multiplier(self) -> jnp.ndarray:
        """λ = exp(ln λ)."""
        return jnp.exp(self.log_lambda)


def lagrange_init(multiplier: float) -> LagrangeState:
    """The multiplier's starting value λ₀ > 0."""
    if multiplier <= 0:
        raise ValueError(f"constraint.multiplier={multiplier}: expected > 0")
    return LagrangeState(log_lambda=jnp.log(jnp.asarray(multiplier, jnp.float32)))


def lagrange_update(state: LagrangeState, mean_cost, *, limit: float,
                    lr: float) -> LagrangeState:
    """ln λ ← ln λ + lr·(mean cost − limit), with λ capped at e²⁰ (a guard of this
    implementation against a limit that cannot be met)."""
    step = lr * (jnp.asarray(mean_cost, jnp.float32) - limit)
    return LagrangeState(log_lambda=jnp.minimum(state.log_lambda + step, 20.0))
