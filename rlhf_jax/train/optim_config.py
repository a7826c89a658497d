"""The optimiser's settings (a config dataclass, importable without JAX)."""
from __future__ import annotations

import dataclasses


_SCHEDULES = ("cosine", "linear", "constant")
_MOMENT_DTYPES = ("", "float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW (Loshchilov & Hutter 2019) hyper-parameters and the learning-rate schedule.

    The rate rises linearly from 0 over `warmup_steps`, then follows `schedule` down to
    `learning_rate · end_lr_fraction` at `total_steps` (0: not set yet; the stages fill in their
    number of steps, and `make_optimizer` refuses it). `frozen` lists parameter path prefixes
    ("reference", "transformer/wte") that receive no update and hold no optimiser state.
    `moment_dtype` stores Adam's moments in float32 or bfloat16 whatever the parameters' dtype
    (bfloat16 halves float32 weights' optimiser state; see `train.moments`); empty keeps optax's
    AdamW, whose moments take the parameters' dtype.
    """

    learning_rate: float = 1e-5  # peak learning rate
    warmup_steps: int = 0  # steps of linear warmup from 0
    total_steps: int = 1000  # schedule length; 0: the stage's steps
    schedule: str = "cosine"  # after warmup: cosine | linear | constant
    end_lr_fraction: float = 0.0  # final rate as a fraction of the peak (cosine, linear)
    b1: float = 0.9  # Adam first-moment decay
    b2: float = 0.999  # Adam second-moment decay
    eps: float = 1e-8  # Adam epsilon
    weight_decay: float = 0.0  # decoupled weight decay (not on norms and biases)
    clip_norm: float = 1.0  # 0 disables global-norm clipping
    frozen: tuple[str, ...] = ()  # parameter path prefixes that are not trained
    # Adam moments' storage dtype: "" (the parameters'), float32, or bfloat16 (stochastic rounding)
    moment_dtype: str = ""

    def __post_init__(self):
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"OptimizerConfig.schedule={self.schedule!r}: expected one of "
                             f"{_SCHEDULES}")
        if self.moment_dtype not in _MOMENT_DTYPES:
            raise ValueError(f"OptimizerConfig.moment_dtype={self.moment_dtype!r}: expected one "
                             f"of {_MOMENT_DTYPES} ('' keeps the parameters' dtype)")
        if self.learning_rate < 0 or self.weight_decay < 0 or self.clip_norm < 0:
            raise ValueError("OptimizerConfig.learning_rate, weight_decay and clip_norm must be "
                             ">= 0")
        if self.total_steps < 0 or self.warmup_steps < 0 or (
                self.total_steps and self.warmup_steps > self.total_steps):
            raise ValueError(f"OptimizerConfig: need 0 <= warmup_steps ({self.warmup_steps}) <= "
                             f"total_steps ({self.total_steps}) and total_steps >= 0")
        object.__setattr__(self, "frozen", tuple(self.frozen))
