"""Metric writers: a JSONL file and TensorBoard event files per run, written by process 0 only.

Metrics stay on the device as they are produced; `MetricBuffer` fetches a batch of steps with one
transfer at each flush, so the host does not stall the device pipeline every step.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the rows of steps <= last_step (and drop a torn last line of a killed run)."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= last_step:
            kept.append(line)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(k + "\n" for k in kept))
    tmp.replace(path)


class MetricWriter:
    """Scalars to a JSONL file and, optionally, TensorBoard events in a directory.

    The run layout (`stages.RunLayout`) decides where both live. A run that resumes from the
    checkpoint of step s passes `resume_step=s`: rows of later steps, written before the run was
    interrupted and about to be recomputed, are dropped from the JSONL file (rewritten
    atomically), and TensorBoard is told to purge events after s (`purge_step`), so every step
    appears exactly once.
    """

    def __init__(self, jsonl_path, tensorboard_dir=None, *, resume_step: Optional[int] = None):
        self.enabled = jax.process_index() == 0
        self.path = Path(jsonl_path)
        self._tb = None
        self._jsonl = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            _truncate_jsonl(self.path, resume_step)
        self._jsonl = open(self.path, "a", buffering=1)
        if tensorboard_dir is not None:
            from tensorboardX import SummaryWriter
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(tensorboard_dir), purge_step=purge)

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        """Record one step's scalars (non-finite values are written as null in JSONL)."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        record = {"step": int(step), **{k: (v if math.isfinite(v) else None)
                                       for k, v in clean.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, int(step))

    def flush(self) -> None:
        """Push buffered records to disk."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close the files."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


class MetricBuffer:
    """Holds per-step device metrics; `drain()` moves them all to the host in one transfer."""

    def __init__(self):
        self._pending: list[tuple[int, dict]] = []

    def add(self, step: int, metrics: dict) -> None:
        """Queue a step's metrics (device arrays; no host sync)."""
        self._pending.append((step, metrics))

    def drain(self) -> list[tuple[int, dict[str, float]]]:
        """All queued steps as host floats, oldest first."""
        if not self._pending:
            return []
        host = jax.device_get(self._pending)
        self._pending = []
        return [(s, {k: float(np.asarray(v)) for k, v in m.items()}) for s, m in host]


class Progress:
    """A tqdm bar with steps/s and key metrics on a terminal; periodic plain lines otherwise."""

    def __init__(self, total: int, initial: int = 0, keys=("train/loss",), enabled: bool = True,
                 stream=None):
        self.stream = stream or sys.stderr
        self.keys = keys
        self.enabled = enabled and jax.process_index() == 0
        self._bar = None
        if self.enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, unit="step", file=self.stream,
                             dynamic_ncols=True)
        self._last = initial

    def update(self, step: int, metrics: Optional[dict[str, float]] = None) -> None:
        """Advance to `step` and show the chosen metrics."""
        if not self.enabled:
            return
        shown = {k: f"{metrics[k]:.4g}" for k in self.keys
                 if metrics and k in metrics}
        if self._bar is not None:
            self._bar.update(step - self._last)
            if shown:
                self._bar.set_postfix(shown, refresh=False)
        elif metrics is not None:
            print(f"step {step} " + " ".join(f"{k}={v}" for k, v in shown.items()),
                  file=self.stream, flush=True)
        self._last = step

    def close(self) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()
