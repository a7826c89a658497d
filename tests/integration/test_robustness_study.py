"""The robustness study's --quick variant, run as a user runs it: attacks on simulated labels,
each defence, the decision log of the screening, and the exploit patched."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_jax.interpret import verify_log

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("clean_acc", "flip20_acc", "flip20_defended_acc", "trigger5_asr",
        "trigger5_defended_asr", "honest_flag_rate", "exploit_gain_before", "exploit_gain_after")


@pytest.mark.slow
def test_robustness_study_quick(tmp_path):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user runs it
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "robustness.py"), "--quick",
                        f"--config.run_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    m = re.fullmatch("robustness: " + " ".join(rf"{k}=(-?[\d.]+)" for k in KEYS), last)
    assert m, last
    s = dict(zip(KEYS, (float(x) for x in m.groups())))
    results = json.loads((tmp_path / "results.json").read_text())
    cells = results["cells"]
    # the backdoor works undefended and the trigger scan names the trigger and removes it
    trig = cells["trigger/0.2/seed0"]
    assert trig["none"]["trigger_asr"] > 0.5
    assert trig["trigger_scan"]["triggers"] == ["sudo"]  # one at a time: no honest word
    assert trig["trigger_scan"]["trigger_asr"] < trig["none"]["trigger_asr"] / 2
    assert s["trigger5_asr"] == pytest.approx(cells["trigger/0.05/seed0"]["none"]["trigger_asr"],
                                              abs=5e-4)  # printed to 3 decimals
    five = cells["trigger/0.05/seed0"]
    assert five["trigger_scan"]["triggers"] == ["sudo"]
    assert s["trigger5_defended_asr"] <= s["trigger5_asr"] / 2
    # inverters cost accuracy; screening flags only attackers here and recovers some of it
    inv = cells["inverter/0.2/seed0"]
    assert inv["none"]["accuracy"] < s["clean_acc"]
    flagged = set(inv["screening"]["flagged"])
    assert flagged and flagged <= set(inv["attackers"])
    assert s["honest_flag_rate"] <= 0.05
    # the exploit: rewarded without gold, and patching cuts its gain with accuracy kept
    ex = results["exploit"]["seed0"]
    assert ex["gain_before"] > 0.5 and ex["gold_change"] == 0
    assert s["exploit_gain_after"] <= 0.25 * s["exploit_gain_before"]
    assert abs(ex["accuracy_after"] - ex["accuracy_before"]) <= 0.02
    # every screening decision, with its evidence, in a log that verifies
    log = tmp_path / "decisions.jsonl"
    assert verify_log(log).ok
    entries = [json.loads(x) for x in log.read_text().splitlines()]
    assert {e["kind"] for e in entries} == {"screening"}
    assert any(e["target"] == f"annotator:{a}" and e["action"] != "keep"
               for e in entries for a in flagged)
    report = (tmp_path / "report.md").read_text()
    for section in ("## inverter", "## trigger", "Attack success", "Annotator screening",
                    "## The reward exploit, before and after patching",
                    "![accuracy against the poisoning rate](plots/accuracy.png)"):
        assert section in report
    assert (tmp_path / "plots" / "accuracy.png").stat().st_size > 10_000
