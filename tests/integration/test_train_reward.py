"""experiments/train_reward.py end to end on the built-in task, and its sharded loss."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from rlhf_jax import data, reward, sharding
from rlhf_jax.models import DecoderModel, init_params, logical_axes, preset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _run(run_dir, *extra):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, str(ROOT / "experiments" / "train_reward.py"),
           f"--config.run_dir={run_dir}", "--config.steps=80", "--config.eval_every=40",
           "--config.data.builtin_pairs=600", "--config.checkpoint.save_every=40", *extra]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reward")
    return run_dir, _run(run_dir)


def test_learns_the_simulated_annotators(trained):
    run_dir, _ = trained
    summary = json.loads((run_dir / "eval_summary.json").read_text())
    assert summary["eval/accuracy"] > 0.7  # chance is 0.5
    assert summary["eval/pairs"] == 60
    names = [k for k in summary if k.startswith("eval/accuracy_annotator/")]
    assert len(names) == 3
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert any("eval/ece" in line for line in lines)


def test_export_reloads_normalised(trained):
    run_dir, _ = trained
    config, params, meta = reward.load_reward_model(run_dir / "export")
    assert meta["num_outputs"] == 1 and meta["normalisation"]["samples"] == 512
    model = DecoderModel(config, heads=("reward",))
    tok = data.builtin.train_tokenizer(run_dir / "tok_check")
    ds = data.build_preference_dataset(run_dir / "data" / "comparisons.jsonl", "pairwise", tok,
                                       run_dir / "data" / "built", max_prompt_len=8,
                                       max_response_len=10, validation_fraction=0.1)
    rewards, _, valid, _ = reward.score_source(model, params, ds.splits["train"], batch_size=32,
                                               prompt_len=8, num_responses=2,
                                               pad_id=tok.pad_token_id)
    ref = rewards[valid > 0][:512]
    assert abs(ref.mean()) < 1e-3 and abs(ref.std() - 1) < 1e-3


def test_resume_continues_from_the_checkpoint(trained, tmp_path):
    run_dir, _ = trained
    # more steps would stretch the cosine schedule the first 80 steps followed: refused, named
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    refused = subprocess.run([sys.executable, str(ROOT / "experiments" / "train_reward.py"),
                              f"--config.run_dir={run_dir}", "--config.steps=100",
                              "--config.eval_every=40", "--config.data.builtin_pairs=600",
                              "--config.checkpoint.save_every=40"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "optim.total_steps: 80 -> 100" in refused.stderr, \
        refused.stderr[-2000:]
    out = _run(run_dir, "--config.steps=100", "--config.allow_config_change=true")
    assert "resumed from step 80" in out


def test_sharded_loss_equals_single_device():
    model = DecoderModel(preset("tiny-llama"), heads=("reward",))
    params = init_params(model, jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = data.PreferenceBatch(
        tokens=rng.integers(0, 256, (8, 2, 12)).astype(np.int32),
        mask=np.ones((8, 2, 12), np.int32), ranks=np.tile([0, 1], (8, 1)).astype(np.int32),
        valid=np.ones((8, 2), np.int32), is_comparison=np.ones(8, np.int32),
        rating=np.zeros(8, np.float32), has_rating=np.zeros(8, np.int32),
        annotator=-np.ones(8, np.int32), weight=np.ones(8, np.float32), prompt_len=4)
    loss_fn = reward.make_reward_loss(model, reward.RewardLossConfig(centering_coef=0.1))
    single = jax.jit(loss_fn)(params, batch, None)[0]
    mesh, rules = sharding.make_mesh("data=2,fsdp=2,tensor=2"), sharding.logical_rules("fsdp_tp")
    sp = sharding.shard_params(params, logical_axes(model), mesh, rules)
    sb = sharding.shard_batch(batch, mesh, rules)
    with sharding.activation_sharding(mesh, rules):
        sharded = jax.jit(loss_fn)(sp, sb, None)[0]
    assert float(sharded) == pytest.approx(float(single), rel=1e-5)
