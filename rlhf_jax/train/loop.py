"""The training loop: the impure shell around a jitted step (metrics, checkpoints, signals)."""
from __future__ import annotations

import dataclasses
import signal
import threading
from typing import Any, Callable, Iterator, Optional, Sequence

from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.train.config import NonFiniteError
from rlhf_jax.train.early_stopping import (EarlyStoppingState, early_stopping_init,
                                           early_stopping_update)
from rlhf_jax.train.metrics import MetricBuffer, MetricWriter, Progress


@dataclasses.dataclass
class LoopResult:
    """How the loop ended."""

    state: Any
    step: int
    preempted: bool  # stopped by SIGTERM/SIGINT after saving
    stopped_early: bool = False  # early stopping ended the run
    loop_state: dict = dataclasses.field(default_factory=dict)


class _StopFlag:
    """Turns SIGTERM/SIGINT into a request to stop after the current step."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_training(step_fn: Callable, state: Any, batches: Iterator, *, total_steps: int,
                 checkpointer: Optional[Checkpointer] = None,
                 writer: Optional[MetricWriter] = None, config: Optional[dict] = None,
                 log_every: int = 10, max_consecutive_skips: int = 10,
                 eval_fn: Optional[Callable[[Any], dict]] = None, eval_every: int = 0,
                 leaf_names: Sequence[str] = (), progress: bool = True,
                 progress_keys=("train/loss",), early_stop_metric: str = "",
                 patience: int = 0, early_stop_mode: str = "min",
                 loop_state: Optional[dict] = None) -> LoopResult:
    """Run `state, metrics = step_fn(state, batch)` until `total_steps`.

    Metrics are fetched from the device every `log_every` steps in one transfer. Checkpoints
    (state + `batches.get_state()` + `config`) are saved on the checkpointer's cadence and at the
    end. SIGTERM or SIGINT finishes the current step, saves, and returns with `preempted=True`.
    More than `max_consecutive_skips` consecutive non-finite steps (the state's
    `consecutive_skips`, checked after every step and carried across a resume) raise
    `NonFiniteError` at that step, naming it and the quantity (the skipped steps left the
    parameters unchanged).

    `eval_fn(state) -> metrics` runs every `eval_every` steps; with `early_stop_metric` and
    `patience`, the run ends after `patience` evaluations without improvement. That bookkeeping
    is the `loop_state` saved with each checkpoint; pass the restored one back to resume exactly.
    """

    step = int(state.step)
    buffer, pbar = MetricBuffer(), Progress(total_steps, step, progress_keys, enabled=progress)
    loop_state = dict(loop_state or {})
    last_eval = loop_state.get("last_eval", {})
    stopper = EarlyStoppingState(**loop_state["early_stopping"]) if "early_stopping" in \
        loop_state else early_stopping_init(early_stop_mode)

    def flush():
        drained = buffer.drain()
        for s, m in drained:
            for key in ("train/nonfinite_leaf", "train/loss_finite", "train/grads_finite"):
                m.pop(key, None)
            if writer is not None:
                writer.write(s, m)
            if s == drained[-1][0]:
                pbar.update(s, m)

    def check_finite(metrics):
        """Stop at the step that exceeds the limit (the count survives a resume: it is part of
        the train state), naming the quantity and the first non-finite gradient leaf."""
        consecutive = int(getattr(state, "consecutive_skips", 0))
        if consecutive <= max_consecutive_skips:
            return
        flush()
        loss_ok = bool(metrics.get("train/loss_finite", True))
        grads_ok = bool(metrics.get("train/grads_finite", True))
        leaf = int(metrics.get("train/nonfinite_leaf", 0))
        what = "loss" if not loss_ok else "gradient"
        where = (f" (first non-finite gradient: {leaf_names[leaf]})"
                 if not grads_ok and leaf < len(leaf_names) else "")
        raise NonFiniteError(
            f"step {step}: non-finite {what}{where} for {consecutive} consecutive steps "
            f"(limit {max_consecutive_skips}); the updates were skipped, so the parameters are "
            "those of the last finite step")

    def save(force=False):
        loop_state.update(last_eval=last_eval, early_stopping=dataclasses.asdict(stopper))
        if checkpointer is not None:
            data_state = batches.get_state() if hasattr(batches, "get_state") else None
            checkpointer.save(step, state, data_state=data_state, config=config,
                              metrics=last_eval or None, loop_state=loop_state, force=force)

    with _StopFlag() as stop:
        try:
            while step < total_steps and not stop.requested and not stopper.stop:
                state, metrics = step_fn(state, next(batches))
                step += 1
                buffer.add(step, metrics)
                check_finite(metrics)
                if step % log_every == 0:
                    flush()
                if eval_fn is not None and eval_every and step % eval_every == 0:
                    last_eval = {k: float(v) for k, v in eval_fn(state).items()}
                    if writer is not None:
                        writer.write(step, last_eval)
                    if early_stop_metric and patience:
                        if early_stop_metric not in last_eval:
                            raise KeyError(f"early_stop_metric={early_stop_metric!r} is not "
                                           f"among the eval metrics {sorted(last_eval)}")
                        stopper = early_stopping_update(stopper, last_eval[early_stop_metric],
                                                        patience=patience, mode=early_stop_mode)
                if checkpointer is not None and checkpointer.should_save(step):
                    flush()
                    save()
            flush()
            save(force=True)
            if checkpointer is not None:
                checkpointer.wait()
        finally:
            pbar.close()
            if writer is not None:
                writer.flush()
    return LoopResult(state=state, step=step, preempted=stop.requested,
                      stopped_early=stopper.stop, loop_state=loop_state)
