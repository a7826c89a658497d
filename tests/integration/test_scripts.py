"""The entry scripts as a user meets them: a mistake is one `error:` line and exit status 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script, *args):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, str(ROOT / "experiments" / script), *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("script,args,message", [
    ("train_sft.py", ["--config.stpes=3"], "unknown config key 'stpes'"),
    ("train_sft.py", ["--config.optim.learning_rate=1e999"], "expected a finite number"),
    ("train_reward.py", ["--config.steps=ten"], "--config.steps='ten': expected int"),
    ("train_ppo.py", ["--config.rollout.advantage=ppo"], "advantage='ppo'"),
    ("rlhf_pipeline.py", ["--config.sft.steps=0"], "sft.steps=0 needs policy_dir"),
    ("rlhf_pipeline.py", ["--config.method=ppo2"], "method='ppo2': expected one of ppo, rloo"),
    ("rlhf_pipeline.py", ["--config.offline.loss.method=kto"],
     "offline.loss.method is set by the pipeline (from method)"),
    ("train_offline.py", ["--config.loss.method=dpo", "--config.data.kind=binary",
                          "--config.data.train_file=thumbs.jsonl"],
     "data.kind='binary': method 'dpo' learns from pairwise | ranking records"),
    ("train_offline.py", ["--config.reference=none"], "reference='none': expected 'cached'"),
])
def test_user_error_is_one_line_and_status_2(script, args, message, tmp_path):
    out = _run(script, f"--config.run_dir={tmp_path / 'run'}", *args)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.startswith("error: ") and message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("script", ["train_sft.py", "train_reward.py"])
def test_run_dir_that_cannot_be_written_is_named(script, tmp_path):
    (tmp_path / "file").write_text("")
    out = _run(script, f"--config.run_dir={tmp_path / 'file' / 'run'}", "--config.steps=30")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.startswith(f"error: run_dir='{tmp_path / 'file' / 'run'}' cannot be "
                                 "written (Not a directory)"), out.stderr[-2000:]


def test_missing_reward_model_is_named(tmp_path):
    out = _run("train_ppo.py", f"--config.run_dir={tmp_path / 'run'}",
               f"--config.reward_dir={tmp_path / 'nowhere'}")
    assert out.returncode == 2 and "nowhere' does not exist" in out.stderr, out.stderr[-2000:]


def test_help_lists_every_key_with_default_and_description():
    out = _run("train_ppo.py", "--help")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--config.kl.beta=0.05  KL penalty coefficient" in out.stdout
    assert "--config.rollout.advantage=\"gae\"" in out.stdout


def test_every_config_key_has_a_description():
    from rlhf_jax import stages
    from rlhf_jax.train.config_help import missing_descriptions
    for cls in (stages.SFTConfig, stages.RewardConfig, stages.PPOStageConfig,
                stages.PipelineConfig):
        assert missing_descriptions(cls) == [], cls.__name__


@pytest.mark.parametrize("case", ["empty_prompts", "missing_policy", "bad_preferences"])
def test_pipeline_inputs_are_checked_before_any_stage(tmp_path, case):
    run = tmp_path / "run"
    if case == "empty_prompts":
        (tmp_path / "prompts.jsonl").write_text("")
        args, message = [f"--config.prompts_file={tmp_path / 'prompts.jsonl'}"], \
            "prompts.jsonl: no valid prompt records (0 read)"
    elif case == "missing_policy":
        args, message = [f"--config.policy_dir={tmp_path / 'nowhere'}", "--config.sft.steps=0"], \
            "nowhere: model directory does not exist"
    else:
        (tmp_path / "p.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "a"}\n')
        args, message = [f"--config.preference_file={tmp_path / 'p.jsonl'}"], \
            "p.jsonl:1: fields 'chosen' and 'rejected' are identical"
    out = _run("rlhf_pipeline.py", f"--config.run_dir={run}", *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    assert not (run / "sft").exists()  # nothing was trained first


@pytest.mark.parametrize("kind,good,hostile,message", [
    ("pairwise", {"prompt": "p", "chosen": "a", "rejected": "b"}, "[" * 100_000,
     "hostile.jsonl:2: not readable JSON (nested deeper than Python's limit"),
    ("rating", {"prompt": "p", "response": "r", "rating": 0.5},
     '{"prompt": "p", "response": "r", "rating": 1' + "0" * 400 + "}",
     "hostile.jsonl:2: field 'rating' is an integer of 401 digits, beyond a float; expected a "
     "finite number in the declared range [0.0, 1.0]"),
    ("ranking", {"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1]},
     '{"prompt": "p", "responses": ["a", "b"], "ranks": [0, 10000000000]}',
     "hostile.jsonl:2: field 'ranks'[1] is 10000000000; a rank among 2 responses is in [0, 2]"),
], ids=["nested_100k", "rating_400_digits", "rank_1e10"])
def test_hostile_preference_file_is_one_line_and_status_2(tmp_path, kind, good, hostile,
                                                          message):
    """These ended in a RecursionError / OverflowError traceback."""
    f = tmp_path / "hostile.jsonl"
    f.write_text(json.dumps(good) + "\n" + hostile + "\n")
    out = _run("train_reward.py", f"--config.run_dir={tmp_path / 'run'}",
               f"--config.data.train_file={f}", f"--config.data.kind={kind}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.startswith("error: ") and message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
