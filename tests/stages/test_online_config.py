"""Online DPO's config refuses what it cannot run, naming the field (no JAX needed)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_jax import offline, stages

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("fields, message", [
    ({"loss": offline.OfflineLossConfig(method="kto")},
     "loss.method='kto': online DPO takes a pairwise loss, one of dpo, cdpo"),
    ({"samples_per_prompt": 1}, "samples_per_prompt=1: online DPO needs >= 2"),
    ({"judge": "gpt4"}, "judge='gpt4': expected 'reward_model', 'constitution' or a text "
                        "scorer"),
    ({"reward_dir": ""}, "judge='reward_model' needs reward_dir"),
    ({"judge": "vader", "reward_std_coef": 0.5}, "judge='vader' is no reward model"),
    ({"judge": "constitution", "objective_weights": "a=1"}, "judge='constitution' is no reward"),
])
def test_config_errors_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        stages.OnlineDPOConfig(**fields)


def test_every_pairwise_method_and_text_judge_is_accepted():
    for method in offline.PAIRWISE:
        stages.OnlineDPOConfig(loss=offline.OfflineLossConfig(method=method))
    cfg = stages.OnlineDPOConfig(judge="vader", reward_dir="")
    assert cfg.samples_per_prompt == 2 and cfg.loss.method == "dpo"


def test_the_entry_script_reports_a_config_error_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "train_online_dpo.py"),
                          f"--config.run_dir={tmp_path}", "--config.loss.method=awr"],
                         env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "error: config: loss.method='awr': online DPO takes a pairwise loss" in out.stderr
