"""Orbax checkpoints of (train state, data position, config, loop state), with restore fallback.

Orbax writes each step into a temporary directory and renames it when complete, so a save cut off
by a crash never looks finished; tmp leftovers are removed on the next start. Once a step is
finished, `integrity.json` records the SHA-256 of every file in it; `restore` verifies it, so a
flipped bit in an array file or edited JSON metadata is caught like a file that no longer
parses. A step without a manifest (a save interrupted before sealing, or a directory that lost
its files) is restored unverified, and counts as damaged when that fails: nothing vouches for
it. A damaged step is moved aside into `damaged/` (kept for inspection, out of the keep-last
slots, so a later save of that step number succeeds), and `restore` warns, naming the bad and
the fallback step, and uses the newest readable one, or none (a fresh start) when every step
was damaged.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from rlhf_jax.checkpoint.config import (CheckpointConfig, DamagedCheckpointError,
                                        NoReadableCheckpointError)

log = logging.getLogger(__name__)


class _NoMetricsNote(logging.Filter):
    """Drops Orbax's "Requested `tracked_metric`; did not provide metrics." note: with
    `keep_best`, the saves between two evaluations carry no metrics by design (they are kept by
    recency, `keep_last`; the best by metric among the evaluated ones), so the note fires on
    every such save of a normal run and says nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Requested `tracked_metric`")


logging.getLogger("absl").addFilter(_NoMetricsNote())


@dataclasses.dataclass
class Restored:
    """A restored checkpoint."""

    step: int
    state: Any
    data_state: dict
    config: dict
    loop_state: dict = dataclasses.field(default_factory=dict)


INTEGRITY_FILE = "integrity.json"


def _digests(step_dir: Path) -> dict:
    """SHA-256 of every file below `step_dir` (except the manifest), by relative path."""
    out = {}
    for path in sorted(step_dir.rglob("*")):
        if path.is_file() and path.name != INTEGRITY_FILE:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[path.relative_to(step_dir).as_posix()] = h.hexdigest()
    return out


def seal_step(step_dir: Path) -> None:
    """Write the integrity manifest of a finished step (atomically)."""
    manifest = {"algorithm": "sha256", "files": _digests(step_dir)}
    tmp = step_dir / (INTEGRITY_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=0, sort_keys=True))
    tmp.replace(step_dir / INTEGRITY_FILE)


def verify_step(step_dir: Path) -> bool:
    """Check a step against its manifest; raise `DamagedCheckpointError` naming the first file
    that is missing, extra or altered. Returns False when the step has no manifest (a save
    interrupted between finishing and sealing), True when it verified."""
    path = step_dir / INTEGRITY_FILE
    if not path.is_file():
        return False
    try:
        expected = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise DamagedCheckpointError(f"{path}: unreadable integrity manifest ({e})") from None
    actual = _digests(step_dir)
    for name in sorted(set(expected) | set(actual)):
        if expected.get(name) != actual.get(name):
            what = ("missing" if name not in actual else "unexpected" if name not in expected
                    else "altered since it was saved")
            raise DamagedCheckpointError(f"{step_dir / name} is {what}")
    return True


class Checkpointer:
    """Saves and restores runs through an Orbax `CheckpointManager` (collective on multi-host)."""

    def __init__(self, cfg: CheckpointConfig):
        if not cfg.directory:
            raise ValueError("CheckpointConfig.directory is empty: where should checkpoints go?")
        self.cfg = cfg
        self.directory = Path(cfg.directory).absolute()
        self._seal_lock = threading.Lock()
        self._unfit: set[int] = set()  # verified steps that failed to restore into this run
        keep = [policies.LatestN(cfg.keep_last)]
        if cfg.keep_best:
            metric = cfg.best_metric
            keep.append(policies.BestN(get_metric_fn=lambda m: m[metric],
                                       reverse=cfg.best_mode == "min", n=cfg.keep_best,
                                       keep_checkpoints_without_metrics=False))
        # best_fn makes Orbax write each step's metrics next to it, so that BestN still knows
        # the best step after a restart (the preservation policy alone does not persist them)
        best = dict(best_fn=lambda m: m[cfg.best_metric], best_mode=cfg.best_mode) \
            if cfg.keep_best else {}
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep),
            enable_async_checkpointing=cfg.async_save, create=True,
            cleanup_tmp_directories=True, **best,
            **(dict(async_options=ocp.AsyncOptions(
                post_finalization_callback=self._seal_finished)) if cfg.async_save else {}))
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "config", "loop"))

    def _seal_finished(self) -> None:
        """Write the integrity manifest of every finished step that lacks one (process 0)."""
        if jax.process_index() != 0:
            return
        with self._seal_lock:  # Orbax's finalisation thread and wait() may both get here
            for step_dir in self.directory.iterdir():
                if step_dir.is_dir() and step_dir.name.isdigit() and \
                        (step_dir / "commit_success.txt").exists() and \
                        not (step_dir / INTEGRITY_FILE).exists():
                    seal_step(step_dir)

    def _move_aside(self, step: int) -> Path:
        """Move a damaged step into `damaged/` so that Orbax no longer counts it."""
        target = self.directory / "damaged" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while target.exists():  # the same step damaged twice within a second: keep both
            target, n = target.with_name(f"{target.name.split('.')[0]}.{n}"), n + 1
        if jax.process_index() == 0:
            target.parent.mkdir(exist_ok=True)
            shutil.move(str(self.directory / str(step)), str(target))
        self.manager.reload()
        return target

    def should_save(self, step: int) -> bool:
        """True on the save cadence."""
        return step % self.cfg.save_every == 0

    def save(self, step: int, state: Any, *, data_state: Optional[dict] = None,
             config: Optional[dict] = None, metrics: Optional[dict] = None,
             loop_state: Optional[dict] = None, force: bool = False) -> bool:
        """Start saving (asynchronously unless configured otherwise); True if a save began."""
        if step in self.manager.all_steps():
            if step in self._unfit:
                log.warning("checkpoint step %d in %s exists but did not restore into this run; "
                            "it is kept and this save of step %d is skipped", step,
                            self.directory, step)
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state or {}),
                                  config=ocp.args.JsonSave(config or {}),
                                  loop=ocp.args.JsonSave(loop_state or {}))
        metrics = {k: float(v) for k, v in (metrics or {}).items()} or None
        started = self.manager.save(step, args=args, metrics=metrics,
                                    force=True if force else None)
        if not self.cfg.async_save:
            self._seal_finished()
        return started

    def steps(self) -> list[int]:
        """Finished checkpoint steps, oldest first."""
        return sorted(self.manager.all_steps())

    def restore(self, abstract_state: Any, step: Optional[int] = None) -> Optional[Restored]:
        """Restore into `abstract_state` (ShapeDtypeStructs carrying the target shardings).

        Without `step`, the newest readable checkpoint; None when there is none at all, or when
        every step was damaged and moved aside (a fresh start, with a warning). A step that
        verifies but does not fit this run stays in place; when no step restores and one such
        is left, `NoReadableCheckpointError`.
        """
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        errors, moved_any = [], False
        for i, s in enumerate(steps):
            sealed = True
            try:
                sealed = verify_step(self.directory / str(s))
                if not sealed:
                    log.warning("checkpoint step %d in %s has no integrity manifest (its save "
                                "was interrupted before sealing, or its files are gone); "
                                "restoring it unverified", s, self.directory)
                out = self.manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore(),
                    loop=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 - any failure means "unreadable", try older
                errors.append(f"step {s}: {type(e).__name__}: {e}")
                nxt = steps[i + 1] if i + 1 < len(steps) else None
                # a step whose files changed since it was saved, or an unsealed one that does
                # not restore (nothing vouches for its files), is moved aside, so that the run
                # saves that step again; a verified step that merely does not fit this run
                # (e.g. another model's state) is left where it is
                if isinstance(e, DamagedCheckpointError) or not sealed:
                    moved, moved_any = f", moved to {self._move_aside(s)}", True
                else:
                    moved = ""
                    self._unfit.add(int(s))
                log.warning("checkpoint step %d in %s is unreadable (%s: %s)%s; %s",
                            s, self.directory, type(e).__name__, str(e)[:300], moved,
                            f"falling back to step {nxt}" if nxt is not None else
                            "no older checkpoint left")
                continue
            return Restored(step=int(s), state=out["state"], data_state=out["data"] or {},
                            config=out["config"] or {}, loop_state=out["loop"] or {})
        if errors and (self._unfit or step is not None):
            raise NoReadableCheckpointError(
                f"no readable checkpoint in {self.directory}: " + "; ".join(errors))
        if moved_any:
            log.warning("no readable checkpoint left in %s (the damaged steps are in %s); "
                        "starting from scratch", self.directory, self.directory / "damaged")
        return None

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk (and sealed)."""
        self.manager.wait_until_finished()
        self._seal_finished()

    def close(self) -> None:
        """Finish pending saves and release resources."""
        self.wait()
        self.manager.close()
