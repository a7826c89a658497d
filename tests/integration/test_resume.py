"""Exact resume: SIGKILL at a random step of the SFT, reward-model, PPO (full with a reward-model
refresh, and LoRA with a cost constraint), offline (KTO) and online DPO (LoRA, judged by the
reward model) stages, rerun, and the exported parameters are bitwise equal to an uninterrupted
run's, with every step logged once."""
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
STEPS = {"sft": 24, "reward": 16, "ppo": 8, "offline": 12, "ppo_lora": 8, "online_dpo": 8}
SAVE_EVERY = {"sft": 4, "reward": 4, "ppo": 2, "offline": 4, "ppo_lora": 2, "online_dpo": 2}
PROGRESS_KEY = {"sft": "train/loss", "reward": "train/loss", "ppo": "score/mean",
                "offline": "train/loss", "ppo_lora": "score/mean", "online_dpo": "train/loss"}


def _cmd(stage, run_dir, reward_dir=None):
    common = [f"--config.run_dir={run_dir}", f"--config.steps={STEPS[stage]}",
              "--config.log_every=1", f"--config.checkpoint.save_every={SAVE_EVERY[stage]}"]
    extra = {
        "sft": ["--config.batch_size=8", "--config.length=16", "--config.optim.warmup_steps=4"],
        "reward": ["--config.batch_size=16", "--config.optim.warmup_steps=4",
                   "--config.eval_every=8", "--config.data.builtin_pairs=200",
                   "--config.normalise_samples=64"],
        "ppo": [f"--config.reward_dir={reward_dir}", "--config.batch_size=8",
                "--config.eval_prompts=8", "--config.sampling.max_new_tokens=6",
                "--config.kl.controller=adaptive", "--config.kl.target=0.01",
                "--config.kl.horizon=20"],
        # KTO: mismatched completions and the cached reference are part of what resumes
        "offline": ["--config.batch_size=16", "--config.data.builtin_pairs=200",
                    "--config.eval_every=8", "--config.loss.method=kto"],
        # the sampling key, the prompt order and LoRA's reference (the base, adapters off)
        "online_dpo": [f"--config.reward_dir={reward_dir}", "--config.batch_size=8",
                       "--config.samples_per_prompt=3", "--config.sampling.max_new_tokens=6",
                       "--config.lora.rank=4", "--config.optim.learning_rate=1e-3"],
    }
    # LoRA: frozen base split from the adapters in every update, the critic adapted too; a
    # profanity constraint whose multiplier λ (a train-state helper) moves every iteration
    extra["ppo_lora"] = extra["ppo"] + ["--config.lora.rank=4",
                                        "--config.optim.learning_rate=1e-3",
                                        "--config.constraint.cost=profanity",
                                        "--config.constraint.limit=0.0"]
    # full PPO refreshes its reward model after iterations 3 and 6 (weights, pair buffer and
    # label count are in the checkpoint; prompts, samples and labels come from the step's key)
    extra["ppo"] += ["--config.refresh.every=3", "--config.refresh.prompts=8",
                     "--config.refresh.steps=4", "--config.refresh.batch_size=8",
                     "--config.refresh.labels=simulated"]
    extra = extra[stage]
    script = {"sft": "train_sft.py", "reward": "train_reward.py", "ppo": "train_ppo.py",
              "offline": "train_offline.py", "ppo_lora": "train_ppo.py",
              "online_dpo": "train_online_dpo.py"}[stage]
    return [sys.executable, "-u", str(ROOT / "experiments" / script), *common, *extra]


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one device, like a plain run
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run(cmd):
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


def _run_until(cmd, stop_step, sig):
    """Start a run and send `sig` once it reports step `stop_step`; return (returncode, output)."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"step {stop_step} "):
            proc.send_signal(sig)
            break
    rest, _ = proc.communicate(timeout=600)
    return proc.returncode, "".join(lines) + (rest or "")


def _final_params(run_dir):
    """Every tensor the run exported (the reward model's head and normalisation included; PPO's
    refreshed reward model too)."""
    out = {}
    for path in sorted([*(Path(run_dir) / "export").glob("*.safetensors"),
                        *(Path(run_dir) / "reward_refreshed").glob("*.safetensors")]):
        f = SafetensorsFile(path)
        out.update({f"{path.parent.name}/{path.name}/{k}": np.array(f.get(k)) for k in f.keys()})
    return out


def _assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def _metrics(run_dir):
    """metrics.jsonl rows without the timings (which differ from run to run)."""
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _assert_metrics_as_uninterrupted(stage, run_dir, reference_dir):
    """Steps logged after the restored checkpoint and before the kill are dropped on resume, and
    what the resumed run logs (losses, scores, the adaptive β) equals the uninterrupted run's."""
    rows = _metrics(run_dir)
    steps = [r["step"] for r in rows if PROGRESS_KEY[stage] in r]
    assert steps == list(range(1, STEPS[stage] + 1)), steps
    assert rows == _metrics(reference_dir)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Exported parameters of uninterrupted runs of each stage (PPO uses the reward model)."""
    root = tmp_path_factory.mktemp("straight")
    for stage in STEPS:
        _run(_cmd(stage, root / stage, reward_dir=root / "reward" / "export"))
    return root, {stage: _final_params(root / stage) for stage in STEPS}


@pytest.mark.parametrize("stage", list(STEPS))
def test_sigkill_at_random_step_then_resume_is_bitwise_exact(tmp_path, references, stage):
    root, params = references
    cmd = _cmd(stage, tmp_path / "killed", reward_dir=root / "reward" / "export")
    kill_at = random.Random().randint(SAVE_EVERY[stage] + 1, STEPS[stage] - 1)
    code, out = _run_until(cmd, kill_at, signal.SIGKILL)
    assert code == -signal.SIGKILL, out[-2000:]
    assert not (tmp_path / "killed" / "export").exists()
    # Saves are asynchronous: whatever was finalised before the kill is what a rerun resumes from
    # (an unfinished save is only a temporary directory and must be ignored).
    finished = sorted(int(p.name) for p in (tmp_path / "killed" / "checkpoints").iterdir()
                      if p.name.isdigit())
    resumed = _run(cmd)
    if finished:
        assert f"resumed from step {finished[-1]}" in resumed, (finished, resumed[-2000:])
        assert finished[-1] % SAVE_EVERY[stage] == 0 and finished[-1] <= kill_at
    else:
        assert "resumed from step" not in resumed
    _assert_bitwise_equal(_final_params(tmp_path / "killed"), params[stage])
    _assert_metrics_as_uninterrupted(stage, tmp_path / "killed", root / stage)


def test_sigterm_saves_and_exits_zero_then_resumes(tmp_path, references):
    cmd = _cmd("sft", tmp_path / "run")
    code, out = _run_until(cmd, 7, signal.SIGTERM)
    assert code == 0, out[-2000:]
    stopped = int(out.strip().rsplit("preempted at step ", 1)[1].split()[0])
    assert stopped >= 7
    assert (tmp_path / "run" / "checkpoints" / str(stopped)).is_dir()
    resumed = _run(cmd)
    assert f"resumed from step {stopped}" in resumed
    _assert_bitwise_equal(_final_params(tmp_path / "run"), references[1]["sft"])
    _assert_metrics_as_uninterrupted("sft", tmp_path / "run", references[0] / "sft")


def test_ppo_run_records_its_kl_state_timings_and_samples(references):
    """What the bitwise resume above relies on: the adaptive β moves (so restoring it matters),
    and a PPO run logs its time split and the initial policy's samples."""
    rows = [json.loads(x) for x in (references[0] / "ppo" / "metrics.jsonl").open()]
    betas = [r["kl/beta"] for r in rows if "kl/beta" in r]
    assert len(betas) == STEPS["ppo"] and len(set(betas)) == len(betas)
    # the reward model was refreshed twice, and its export is among what resume compares
    assert [r["step"] for r in rows if "refresh/accuracy_fresh" in r] == [3, 6]
    assert "reward_refreshed/reward_head.safetensors/gain" in references[1]["ppo"]
    lora_rows = [json.loads(x) for x in (references[0] / "ppo_lora" / "metrics.jsonl").open()]
    lambdas = [r["constraint/lambda"] for r in lora_rows if "constraint/lambda" in r]
    assert len(lambdas) == STEPS["ppo_lora"] and len(set(lambdas)) == len(lambdas)
    assert {"time/generate", "time/score", "time/update"} <= set(rows[-1])
    before = [json.loads(x) for x in (references[0] / "ppo" / "samples_before.jsonl").open()]
    assert len(before) == 8 and all("response" in r for r in before)
