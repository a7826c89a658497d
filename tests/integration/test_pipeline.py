"""The main job end to end on a tiny budget (the script, as a user runs it), and the pipeline as a
library call on user-supplied inputs."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlhf_jax import stages, train

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TINY = ["--config.sft.steps=20", "--config.comparisons=200", "--config.reward.steps=20",
        "--config.reward.eval_every=10", "--config.ppo.steps=4", "--config.ppo.batch_size=16",
        "--config.eval_samples=16", "--config.max_new_tokens=6"]


def _pipeline(args):
    """The command a user runs, in a fresh process on one CPU device."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "rlhf_pipeline.py"), *args],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pipeline")
    stdout = _pipeline([f"--config.run_dir={run_dir}", *TINY])
    assert "== evaluation (stage 5)" in stdout  # progress is shown stage by stage
    return run_dir


def test_every_artifact_in_one_run_directory(run):
    for rel in ("sft/export/model.safetensors", "sft/checkpoints", "data/comparisons.jsonl",
                "reward/export/reward_head.safetensors", "reward/eval_summary.json",
                "ppo/export/model.safetensors", "ppo/metrics.jsonl", "ppo/checkpoints",
                "eval.json", "run.json", "report.md", "plots/gold_proxy_vs_kl.png",
                "plots/reward_accuracy.png"):
        assert (run / rel).exists(), rel
    info = json.loads((run / "run.json").read_text())
    assert set(info["stage_seconds"]) == {"sft", "comparisons", "reward", "ppo", "evaluation"}
    assert 0.5 < info["gold_label_agreement"] <= 1.0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["before"]["summary"]["samples"] == 16
    assert abs(ev["before"]["summary"]["kl"]["mean"]) < 1e-4  # the reference against itself
    ppo_rows = [json.loads(x) for x in (run / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward_terms/vader" in r for r in ppo_rows)  # the gold judge, monitored
    report = (run / "report.md").read_text()
    assert f"{ev['after']['summary']['gold']['mean']:.3f}" in report
    # every prepared dataset, with what was truncated and which limit did it, is repeated
    data_lines = [x for x in report.splitlines() if x.startswith("- data ")]
    assert [x.split(" (")[1].split(")")[0] for x in data_lines] == ["text", "pairwise", "prompt"]
    assert "truncated: " in data_lines[1] and "responses to data.max_response_len=" in \
        data_lines[1]


def test_local_checkpoint_and_preference_file(run, tmp_path):
    """The same command on a user's HF directory and comparisons file (no SFT, no simulation),
    learning with KTO straight from the comparisons instead of PPO."""
    prefs = tmp_path / "prefs.jsonl"
    lines = (run / "data" / "comparisons.jsonl").read_text().splitlines()[:120]
    prefs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "mine"
    overrides = train.parse_config([f"--config.run_dir={out}", "--config.sft.steps=0",
                                    f"--config.policy_dir={run / 'sft' / 'export'}",
                                    f"--config.preference_file={prefs}", *TINY[2:],
                                    "--config.method=kto", "--config.offline.steps=6",
                                    "--config.offline.optim.warmup_steps=2",
                                    "--config.offline.eval_every=3"],
                                   str(ROOT / "experiments" / "configs" / "pipeline.py"))
    cfg = train.config_from_dict(stages.PipelineConfig, overrides)
    result = stages.run_pipeline(cfg)
    assert result.report == str(out / "report.md") and result.preempted_stage is None
    assert result.gold_after["mean"] == json.loads((out / "eval.json").read_text())[
        "after"]["summary"]["gold"]["mean"]
    info = json.loads((out / "run.json").read_text())
    assert set(info["stage_seconds"]) == {"reward", "kto", "evaluation"}
    assert info["preference_file"] == str(prefs) and info["method"] == "kto"
    assert not (out / "sft").exists() and not (out / "ppo").exists()
    report = (out / "report.md").read_text()
    assert f"comparisons in `{prefs}`" in report and "| after KTO |" in report
    rows = [json.loads(x) for x in (out / "offline" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/loss" in r] == [3, 6]
    assert "kto/kl_reference_point" in rows[-1] or "kto/kl_reference_point" in rows[-2]
    summary = json.loads((out / "reward" / "eval_summary.json").read_text())
    assert summary["data"]["read"] == 120


def test_online_dpo_in_the_main_job(run, tmp_path):
    """`--config.method=online_dpo` as a user runs it, on the tiny budget, from this module's
    SFT policy and comparisons (no SFT, no simulation): the reward model trained on them ranks
    the policy's own samples at every step, and the report names the method and its judge."""
    out = tmp_path / "online"
    _pipeline([f"--config.run_dir={out}", "--config.sft.steps=0",
               f"--config.policy_dir={run / 'sft' / 'export'}",
               f"--config.preference_file={run / 'data' / 'comparisons.jsonl'}", *TINY[2:],
               "--config.method=online_dpo", "--config.online.steps=4",
               "--config.online.batch_size=8", "--config.online.log_every=1"])
    info = json.loads((out / "run.json").read_text())
    assert set(info["stage_seconds"]) == {"reward", "online_dpo", "evaluation"}
    assert (info["method"], info["online_judge"], info["online_loss"]) == \
        ("online_dpo", "reward_model", "dpo")
    rows = [json.loads(x) for x in (out / "online" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["judge/calls"] == 4 * 8 * 2  # 8 prompts × 2 samples per step
    assert all(np.isfinite(r["judge/score_mean"]) and "rewards/accuracy" in r for r in rows)
    assert (out / "online" / "export" / "model.safetensors").is_file()
    assert not (out / "ppo").exists() and not (out / "offline").exists()
    ev = json.loads((out / "eval.json").read_text())
    assert abs(ev["after"]["summary"]["kl"]["mean"]) > 0  # the policy left its start
    report = (out / "report.md").read_text()
    assert "| after online DPO |" in report
    assert "ranked at every step by the reward model (loss: DPO" in report


def test_best_of_n_under_the_profanity_floor(run):
    """Best-of-n with `ppo.constraint.cost=profanity`: no chosen response is flagged where a
    clean candidate existed, although the reward model alone would pick some flagged ones."""
    from rlhf_jax.eval import TEXT_TERMS
    from rlhf_jax.stages.pipeline import evaluate_before_after

    base = train.config_from_dict(stages.PipelineConfig, train.parse_config(
        [f"--config.run_dir={run}", *TINY, "--config.method=best_of_n", "--config.best_of_n=4",
         "--config.eval_samples=24", "--config.ppo.constraint.cost=profanity",
         "--config.ppo.constraint.limit=0.5"],
        str(ROOT / "experiments" / "configs" / "pipeline.py")))
    ppo_cfg = dataclasses.replace(base.ppo, policy_dir=str(run / "sft" / "export"),
                                  reward_dir=str(run / "reward" / "export"))
    after = evaluate_before_after(base, ppo_cfg, None, TEXT_TERMS["vader"])["after"]
    s = after["summary"]
    assert s["limit"] == 0.5 and s["n"] == 4
    for row in after["rows"]:
        assert row["cost"] == pytest.approx(row["profanity"], abs=1e-6)
    chosen_over = np.mean([r["cost"] > 0.5 for r in after["rows"]])
    assert chosen_over == pytest.approx(s["over_limit"])  # flagged only where all were
    free = dataclasses.replace(ppo_cfg, constraint=dataclasses.replace(ppo_cfg.constraint,
                                                                       cost=""))
    unconstrained = evaluate_before_after(base, free, None, TEXT_TERMS["vader"])["after"]
    assert "limit" not in unconstrained["summary"]
    assert unconstrained["summary"]["profanity_rate"]["mean"] > s["profanity_rate"]["mean"]


def test_changed_config_is_refused(run):
    """Pointing the pipeline at a finished run with a different setting stops before any stage
    runs, naming the key (the override is tested in tests/stages)."""
    cfg = train.config_from_dict(stages.PipelineConfig, train.parse_config(
        [f"--config.run_dir={run}", *TINY], str(ROOT / "experiments" / "configs" / "pipeline.py")))
    changed = dataclasses.replace(cfg, annotator_temperatures="0.5,0.5,0.5")
    with pytest.raises(stages.ConfigMismatchError, match="annotator_temperatures: '0.15,0.3,0.6'"):
        stages.run_pipeline(changed)
    assert json.loads((run / "run.json").read_text())["annotator_temperatures"] == "0.15,0.3,0.6"
