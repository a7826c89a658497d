"""The annotation-budget studies' --quick variants, run as a user runs them."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script, run_dir, *extra, seeds="0,1"):
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--config.quick=true",
                        f"--config.seeds={seeds}", f"--config.run_dir={run_dir}", *extra],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow
def test_label_efficiency_quick(tmp_path):
    # one seed: what is checked holds per seed (seed 0's accuracies are 0.60-0.77, far inside
    # the (0.3, 1] bound; every arm starts from the same labels), and a seed costs 25 s
    out = _run("study_label_efficiency.py", tmp_path / "le", seeds="0")
    report = (tmp_path / "le" / "report.md").read_text()
    assert "![label efficiency](plots/label_efficiency.png)" in report
    assert (tmp_path / "le" / "plots" / "label_efficiency.png").stat().st_size > 10_000
    res = json.loads((tmp_path / "le" / "results.json").read_text())
    assert set(res["summary"]) == {"random", "entropy", "disagreement", "bald", "bald + diverse"}
    for arm, s in res["summary"].items():
        assert s["labels"] == [16, 32, 48] and len(s["mean"]) == 3
        assert all(0.3 < m <= 1.0 for m in s["mean"])
        assert f"| {arm} |" in report
    # every arm starts from the same random labels, model and held-out set
    firsts = {s["mean"][0] for s in res["summary"].values()}
    assert len(firsts) == 1
    assert res["summary"]["random"]["ratio"] == pytest.approx(1.0)
    # a second run reads the finished runs back instead of training again
    again = _run("study_label_efficiency.py", tmp_path / "le", seeds="0")
    assert again.count("accuracy") == out.count("accuracy")
    assert json.loads((tmp_path / "le" / "results.json").read_text())["summary"] == res["summary"]


@pytest.mark.slow
def test_hybrid_and_annotator_studies_quick(tmp_path):
    _run("study_hybrid.py", tmp_path / "hy")
    report = (tmp_path / "hy" / "report.md").read_text()
    assert "up to 30% fewer annotations" in report and "![hybrid](plots/hybrid.png)" in report
    res = json.loads((tmp_path / "hy" / "results.json").read_text())
    assert set(res["summary"]) == {"pairwise only", "pairwise + ratings", "ratings only"}
    _run("study_annotators.py", tmp_path / "an")
    report = (tmp_path / "an" / "report.md").read_text()
    res = json.loads((tmp_path / "an" / "results.json").read_text())
    assert set(res["crowd_summary"]) == {"all labels, unweighted", "majority vote",
                                         "Dawid–Skene reliability-weighted vote",
                                         "learned annotator temperatures"}
    assert len(res["spearman_dawid_skene"]) == 2 and "Spearman" in report
    assert (tmp_path / "an" / "plots" / "redundancy.png").is_file()
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "study_annotators.py"),
                        "--config.quick=true", "--config.seeds=0,1,2",
                        f"--config.run_dir={tmp_path / 'an'}"], capture_output=True, text=True)
    assert r.returncode == 2 and "different config" in r.stderr  # old results not mixed in
