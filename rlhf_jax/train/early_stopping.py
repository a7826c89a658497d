"""Early stopping on a validation metric, as a pure (init, update) pair."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class EarlyStoppingState:
    """Best value so far, evaluations without improvement, and whether to stop."""

    best: float
    bad_evals: int
    stop: bool


def early_stopping_init(mode: str = "min") -> EarlyStoppingState:
    """Initial state; `mode` "min" (loss) or "max" (accuracy)."""
    if mode not in ("min", "max"):
        raise ValueError(f"early stopping mode={mode!r}: expected 'min' or 'max'")
    return EarlyStoppingState(best=np.inf if mode == "min" else -np.inf, bad_evals=0, stop=False)


def early_stopping_update(state: EarlyStoppingState, value: float, *, patience: int,
                          mode: str = "min", min_delta: float = 0.0) -> EarlyStoppingState:
    """Record an evaluation; stop after `patience` evaluations without an improvement."""
    better = value < state.best - min_delta if mode == "min" else value > state.best + min_delta
    if better:
        return EarlyStoppingState(best=float(value), bad_evals=0, stop=False)
    bad = state.bad_evals + 1
    return EarlyStoppingState(best=state.best, bad_evals=bad, stop=bad >= patience)
