"""The method comparison's report: its over-optimisation verdict (the rise-and-fall test,
checked against the final evaluation), one colour and marker per method, nothing clipped from
its plots, and a quick study's processes."""
import json

import numpy as np
import pytest

from rlhf_jax.studies.compare_setup import COMPARED
from rlhf_jax.studies.compare_report import (method_styles, overoptimisation_verdict,
                                             signed_sqrt, write_comparison_report)
from rlhf_jax.studies.compare_setup import CompareConfig, quick_groups


def _trajectory(rise_and_fall: bool, n: int = 150, seed: int = 0) -> list[dict]:
    t = np.arange(n)
    gold = (np.where(t < 50, 0.3 + 0.4 * t / 50, 0.7 - 0.35 * (t - 50) / 100)
            if rise_and_fall else 0.3 + 0.4 * t / n)
    gold = gold + np.random.default_rng(seed).normal(0, 0.05, n)
    return [{"step": int(i + 1), "gold": float(g), "kl": 0.2 * i, "proxy": 0.01 * i}
            for i, g in enumerate(gold)]


def test_overoptimisation_verdict_both_ways():
    v = overoptimisation_verdict(_trajectory(True), {"mean": 0.35, "stderr": 0.02})
    assert v["observed"] and v["evaluation"]["confirmed"] and 35 <= v["peak_step"] <= 65
    assert not overoptimisation_verdict(_trajectory(False), {"mean": 0.7,
                                                            "stderr": 0.02})["observed"]
    few = overoptimisation_verdict(_trajectory(True, n=8))
    assert not few["observed"] and few["reason"] == "8 iterations are too few to test " \
                                                    "(at least 12)"


def test_every_method_has_its_own_colour_and_marker():
    styles = method_styles(COMPARED)
    assert len(set(c for c, _ in styles.values())) == len(COMPARED) == 15
    assert len(set(m for _, m in styles.values())) == len(COMPARED)
    assert method_styles(["dpo", "ppo"]) == {m: styles[m] for m in ("dpo", "ppo")}
    mine = method_styles(["ppo", "my_method"])
    assert mine["my_method"] not in styles.values()


def test_signed_sqrt_keeps_negative_kl():
    np.testing.assert_allclose(signed_sqrt([-4.0, 0.0, 9.0]), [-2.0, 0.0, 3.0])


def test_quick_groups_share_the_methods_out():
    groups = quick_groups(CompareConfig(quick=True, workers=2))
    assert sorted(m for g in groups for m in g) == sorted(COMPARED) and len(groups) == 2
    assert "ppo" in groups[0] and "best_of_n" in groups[1]  # the two costliest apart
    assert quick_groups(CompareConfig(quick=True, workers=4, methods="dpo,kto")) == [["kto"],
                                                                                    ["dpo"]]


def _entry(method, value, gold_after, kl, trajectory=None):
    s = lambda m: {"mean": m, "stderr": 0.02}  # noqa: E731
    e = {"method": method, "key": "ppo.kl.beta" if method == "ppo" else "offline.loss.beta",
         "value": value, "seed": 0, "train_seconds": 1.0, "eval_seconds": 0.5,
         "before_gold": s(0.3), "after_gold": s(gold_after), "before_proxy": s(0.0),
         "after_proxy": s(1.0), "before_kl": s(0.0), "after_kl": s(kl),
         "before_kl_k3": s(0.0), "after_kl_k3": s(abs(kl)),
         "samples": 256 if method == "ppo" else 0, "judge_calls": 256 if method == "ppo" else 0}
    if trajectory:
        e["trajectory"] = trajectory
    return e


def test_report_shows_the_rise_and_fall_and_draws_every_point(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    drawn = {}
    close = plt.close

    def record(fig):
        ax = fig.axes[0]
        drawn[ax.get_title()] = {"x": [x for line in ax.get_lines() for x in line.get_xdata()],
                                 "colours": [c.get_color() for c in ax.get_lines()],
                                 "xlim": ax.get_xlim()}
        close(fig)

    monkeypatch.setattr(plt, "close", record)
    cfg = CompareConfig(run_dir=str(tmp_path), seeds="0", methods="ppo,dpo", quick=True)
    results = [_entry("ppo", 0.0, 0.35, 30.0, _trajectory(True)),
               _entry("dpo", 0.5, 0.5, -0.04)]  # k1 can come out negative near the start
    text = write_comparison_report(cfg, results, {("ppo", 0): 1.0, ("dpo", 0): 1.0},
                                   60.0).read_text()
    line = next(x for x in text.splitlines() if x.startswith("- seed 0:"))
    assert "the gold score rises then falls" in line and "below the peak" in line
    assert "Welch" in text and "150, to follow its over-optimisation" in text
    verdict = json.loads((tmp_path / "results.json").read_text())["overoptimisation"]["0"]
    assert verdict["observed"] and verdict["evaluation"]["confirmed"]
    assert "| DPO | beta = 0.5 | 0.500 ± 0.020 | +0.200 ± 0.028 |" in text  # one seed: its s.e.
    assert "| -0.04 ± 0.02 | 0.04 ± 0.02 | 0 | 0 |" in text and "-0.000" not in text
    assert "| 30.00 ± 0.02 | 30.00 ± 0.02 | 256 | 256 |" in text  # samples, judge calls
    frontier = drawn["Gold score against KL: each method over its sweep, mean ± s.e. over seeds"]
    assert min(frontier["x"]) == pytest.approx(-0.2)  # √0.04, kept on its side of 0
    assert frontier["xlim"][0] < -0.2
    assert len(set(frontier["colours"][1:])) == 2
