"""A run whose newest checkpoint lost its files (integrity.json included) moves that step aside,
resumes from the one before, saves the step again and exits 0; the next run restores it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_jax.checkpoint import verify_step

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _sft(run_dir):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one device, like a plain run
    cmd = [sys.executable, "-u", str(ROOT / "experiments" / "train_sft.py"),
           f"--config.run_dir={run_dir}", "--config.steps=8", "--config.log_every=4",
           "--config.checkpoint.save_every=4", "--config.batch_size=8", "--config.length=16",
           "--config.optim.warmup_steps=2"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


def test_sft_run_recovers_from_a_step_that_lost_its_files(tmp_path):
    run = tmp_path / "run"
    _sft(run)
    step8 = run / "checkpoints" / "8"
    for path in [p for p in step8.rglob("*") if p.is_file()]:
        path.unlink()
    log = _sft(run)
    moved = list((run / "checkpoints" / "damaged").iterdir())
    assert [p.name[:2] for p in moved] == ["8-"] and (moved[0] / "state").is_dir()  # kept
    assert f"moved to {moved[0]}; falling back to step 4" in log
    assert "resumed from step 4" in log and "finished at step 8" in log
    assert verify_step(step8)  # saved again and sealed
    log = _sft(run)
    assert "resumed from step 8" in log and "unreadable" not in log
