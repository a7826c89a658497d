"""The training loop: the impure shell around a jitted step (metrics, checkpoints, signals)."""
from __future__ import annotations

import dataclasses
import signal
import threading
from typing import Any, Callable, Iterator, Optional, Sequence

from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.train.metrics import MetricBuffer, MetricWriter, Progress


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclasses.dataclass
class LoopResult:
    """How the loop ended."""

    state: Any
    step: int
    preempted: bool  # stopped by SIGTERM/SIGINT after saving


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
                 progress_keys=("train/loss",)) -> LoopResult:
    """Run `state, metrics = step_fn(state, batch)` until `total_steps`.

    Metrics are fetched from the device every `log_every` steps in one transfer. Checkpoints
    (state + `batches.get_state()` + `config`) are saved on the checkpointer's cadence and at the
    end. SIGTERM or SIGINT finishes the current step, saves, and returns with `preempted=True`.
    More than `max_consecutive_skips` consecutive non-finite steps raise `NonFiniteError` naming
    the step and the quantity (the skipped steps left the parameters unchanged).
    """
    step = int(state.step)
    buffer, pbar = MetricBuffer(), Progress(total_steps, step, progress_keys, enabled=progress)
    consecutive, last_eval = 0, {}

    def flush():
        nonlocal consecutive
        drained = buffer.drain()
        for s, m in drained:
            leaf = int(m.pop("train/nonfinite_leaf", 0))
            loss_ok, grads_ok = m.pop("train/loss_finite", 1), m.pop("train/grads_finite", 1)
            consecutive = consecutive + 1 if m.get("train/skipped", 0) else 0
            if writer is not None:
                writer.write(s, m)
            if s == drained[-1][0]:
                pbar.update(s, m)
            if consecutive > max_consecutive_skips:
                what = "loss" if not loss_ok else "gradient"
                where = (f" (first non-finite gradient: {leaf_names[leaf]})"
                         if not grads_ok and leaf < len(leaf_names) else "")
                raise NonFiniteError(
                    f"step {s}: non-finite {what}{where} for {consecutive} consecutive steps "
                    f"(limit {max_consecutive_skips}); the updates were skipped, so the "
                    "parameters are those of the last finite step")

    def save(force=False):
        if checkpointer is not None:
            data_state = batches.get_state() if hasattr(batches, "get_state") else None
            checkpointer.save(step, state, data_state=data_state, config=config,
                              metrics=last_eval or None, force=force)

    with _StopFlag() as stop:
        try:
            while step < total_steps and not stop.requested:
                state, metrics = step_fn(state, next(batches))
                step += 1
                buffer.add(step, metrics)
                if step % log_every == 0:
                    flush()
                if eval_fn is not None and eval_every and step % eval_every == 0:
                    last_eval = {k: float(v) for k, v in eval_fn(state).items()}
                    if writer is not None:
                        writer.write(step, last_eval)
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
    return LoopResult(state=state, step=step, preempted=stop.requested)
