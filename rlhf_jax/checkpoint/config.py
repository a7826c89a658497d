"""The checkpointer's settings and errors (importable without JAX or Orbax)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often to save, and which checkpoints to keep.

    The last `keep_last` are kept, plus the `keep_best` best by `best_metric` ("min" or "max"
    `best_mode`) among saves that reported it.
    """

    directory: str = ""  # empty: not set yet (the stages fill in their run layout's)
    save_every: int = 100  # steps between checkpoints (and one at the end)
    keep_last: int = 3  # newest checkpoints kept
    keep_best: int = 0  # best checkpoints kept in addition, by best_metric
    best_metric: str = ""  # evaluation metric that ranks checkpoints for keep_best
    best_mode: str = "min"  # min or max: which direction is better
    async_save: bool = True  # write checkpoints in the background

    def __post_init__(self):
        if self.save_every <= 0 or self.keep_last <= 0 or self.keep_best < 0:
            raise ValueError("CheckpointConfig: save_every and keep_last must be > 0, "
                             "keep_best >= 0")
        if self.keep_best and not self.best_metric:
            raise ValueError("CheckpointConfig.keep_best > 0 needs best_metric (e.g. 'eval/loss')")
        if self.best_mode not in ("min", "max"):
            raise ValueError(f"CheckpointConfig.best_mode={self.best_mode!r}: expected 'min' or "
                             "'max'")


class NoReadableCheckpointError(RuntimeError):
    """Every checkpoint in the directory failed to restore."""


class DamagedCheckpointError(RuntimeError):
    """A checkpoint's files do not match the digests recorded when it was saved."""
