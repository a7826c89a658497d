"""Exact resume: SIGKILL at a random step, rerun, and the final parameters are bitwise equal."""
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlhf_jax.models._safetensors import SafetensorsFile

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STEPS = 24


def _cmd(run_dir):
    return [sys.executable, "-u", str(ROOT / "experiments" / "train_sft.py"),
            f"--config.run_dir={run_dir}", f"--config.steps={STEPS}", "--config.log_every=1",
            "--config.checkpoint.save_every=4", "--config.batch_size=8", "--config.length=16",
            "--config.optim.warmup_steps=4"]


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one device, like a plain run
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run(run_dir):
    out = subprocess.run(_cmd(run_dir), env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


def _run_until(run_dir, stop_step, sig):
    """Start a run and send `sig` once it reports step `stop_step`; return (returncode, output)."""
    proc = subprocess.Popen(_cmd(run_dir), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"step {stop_step} "):
            proc.send_signal(sig)
            break
    rest, _ = proc.communicate(timeout=600)
    return proc.returncode, "".join(lines) + (rest or "")


def _final_params(run_dir):
    f = SafetensorsFile(Path(run_dir) / "export" / "model.safetensors")
    return {k: np.array(f.get(k)) for k in f.keys()}


def _assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def _assert_each_step_logged_once(run_dir):
    """Steps logged after the restored checkpoint and before the kill are dropped on resume."""
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert steps == list(range(1, STEPS + 1)), steps


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Final parameters of the uninterrupted run."""
    run_dir = tmp_path_factory.mktemp("straight")
    _run(run_dir)
    return _final_params(run_dir)


def test_sigkill_at_random_step_then_resume_is_bitwise_exact(tmp_path, reference):
    kill_at = random.Random().randint(9, STEPS - 3)
    code, out = _run_until(tmp_path / "killed", kill_at, signal.SIGKILL)
    assert code == -signal.SIGKILL, out[-2000:]
    assert not (tmp_path / "killed" / "export").exists()
    # Saves are asynchronous: whatever was finalised before the kill is what a rerun resumes from
    # (an unfinished save is only a temporary directory and must be ignored).
    finished = sorted(int(p.name) for p in (tmp_path / "killed" / "checkpoints").iterdir()
                      if p.name.isdigit())
    resumed = _run(tmp_path / "killed")
    if finished:
        assert f"resumed from step {finished[-1]}" in resumed, (finished, resumed[-2000:])
        assert finished[-1] % 4 == 0 and finished[-1] <= kill_at
    else:
        assert "resumed from step" not in resumed
    _assert_bitwise_equal(_final_params(tmp_path / "killed"), reference)
    _assert_each_step_logged_once(tmp_path / "killed")


def test_sigterm_saves_and_exits_zero_then_resumes(tmp_path, reference):
    code, out = _run_until(tmp_path / "run", 7, signal.SIGTERM)
    assert code == 0, out[-2000:]
    stopped = int(out.strip().rsplit("preempted at step ", 1)[1].split()[0])
    assert stopped >= 7
    assert (tmp_path / "run" / "checkpoints" / str(stopped)).is_dir()
    resumed = _run(tmp_path / "run")
    assert f"resumed from step {stopped}" in resumed
    _assert_bitwise_equal(_final_params(tmp_path / "run"), reference)
    _assert_each_step_logged_once(tmp_path / "run")
