"""Orbax checkpoints of (train state, data position, config, loop state), with restore fallback.

Orbax writes each step into a temporary directory and renames it when complete, so a save cut off
by a crash never looks finished; tmp leftovers are removed on the next start. A finished step whose
files were later damaged fails to restore: `restore` then warns, naming the bad and the fallback
step, and uses the newest readable one.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Optional

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often to save, and which checkpoints to keep.

    The last `keep_last` are kept, plus the `keep_best` best by `best_metric` ("min" or "max"
    `best_mode`) among saves that reported it.
    """

    directory: str = ""  # empty: not set yet (the stages fill in their run layout's)
    save_every: int = 100
    keep_last: int = 3
    keep_best: int = 0
    best_metric: str = ""
    best_mode: str = "min"
    async_save: bool = True

    def __post_init__(self):
        if self.save_every <= 0 or self.keep_last <= 0 or self.keep_best < 0:
            raise ValueError("CheckpointConfig: save_every and keep_last must be > 0, "
                             "keep_best >= 0")
        if self.keep_best and not self.best_metric:
            raise ValueError("CheckpointConfig.keep_best > 0 needs best_metric (e.g. 'eval/loss')")
        if self.best_mode not in ("min", "max"):
            raise ValueError(f"CheckpointConfig.best_mode={self.best_mode!r}: expected 'min' or "
                             "'max'")


@dataclasses.dataclass
class Restored:
    """A restored checkpoint."""

    step: int
    state: Any
    data_state: dict
    config: dict
    loop_state: dict = dataclasses.field(default_factory=dict)


class NoReadableCheckpointError(RuntimeError):
    """Every checkpoint in the directory failed to restore."""


class Checkpointer:
    """Saves and restores runs through an Orbax `CheckpointManager` (collective on multi-host)."""

    def __init__(self, cfg: CheckpointConfig):
        if not cfg.directory:
            raise ValueError("CheckpointConfig.directory is empty: where should checkpoints go?")
        self.cfg = cfg
        self.directory = Path(cfg.directory).absolute()
        keep = [policies.LatestN(cfg.keep_last)]
        if cfg.keep_best:
            metric = cfg.best_metric
            keep.append(policies.BestN(get_metric_fn=lambda m: m[metric],
                                       reverse=cfg.best_mode == "min", n=cfg.keep_best,
                                       keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep),
            enable_async_checkpointing=cfg.async_save, create=True,
            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "config", "loop"))

    def should_save(self, step: int) -> bool:
        """True on the save cadence."""
        return step % self.cfg.save_every == 0

    def save(self, step: int, state: Any, *, data_state: Optional[dict] = None,
             config: Optional[dict] = None, metrics: Optional[dict] = None,
             loop_state: Optional[dict] = None, force: bool = False) -> bool:
        """Start saving (asynchronously unless configured otherwise); True if a save began."""
        if step in self.manager.all_steps():
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state or {}),
                                  config=ocp.args.JsonSave(config or {}),
                                  loop=ocp.args.JsonSave(loop_state or {}))
        metrics = {k: float(v) for k, v in (metrics or {}).items()} or None
        return self.manager.save(step, args=args, metrics=metrics, force=True if force else None)

    def steps(self) -> list[int]:
        """Finished checkpoint steps, oldest first."""
        return sorted(self.manager.all_steps())

    def restore(self, abstract_state: Any, step: Optional[int] = None) -> Optional[Restored]:
        """Restore into `abstract_state` (ShapeDtypeStructs carrying the target shardings).

        Without `step`, the newest readable checkpoint; None when there is none at all.
        """
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        errors = []
        for i, s in enumerate(steps):
            try:
                out = self.manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore(),
                    loop=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 - any failure means "unreadable", try older
                errors.append(f"step {s}: {type(e).__name__}: {e}")
                nxt = steps[i + 1] if i + 1 < len(steps) else None
                log.warning("checkpoint step %d in %s is unreadable (%s: %s); %s", s,
                            self.directory, type(e).__name__, str(e)[:300],
                            f"falling back to step {nxt}" if nxt is not None else
                            "no older checkpoint left")
                continue
            return Restored(step=int(s), state=out["state"], data_state=out["data"] or {},
                            config=out["config"] or {}, loop_state=out["loop"] or {})
        if errors:
            raise NoReadableCheckpointError(
                f"no readable checkpoint in {self.directory}: " + "; ".join(errors))
        return None

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release resources."""
        self.manager.wait_until_finished()
        self.manager.close()
