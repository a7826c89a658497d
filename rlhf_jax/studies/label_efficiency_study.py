"""The label-efficiency study on the built-in task: held-out accuracy (by the gold judge)
against the number of labels for each acquisition function of the active-learning loop, with
mean ± standard error over seeds; writes `report.md`, `results.json` and a plot, and reads runs
already done back, so a stopped study resumes."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from rlhf_jax import train
from rlhf_jax.studies.configs.budgets import LabelEfficiencyConfig
from rlhf_jax.studies.active import ActiveConfig, active_learning
from rlhf_jax.studies.common import (band_plot, cached_json, first_reaching, fmt_reached,
                                     int_list, mean_se, start_study, study_tokenizer,
                                     write_report)
from rlhf_jax.studies.learner import Learner, LearnerConfig
from rlhf_jax.studies.pairs import SimulatedAnnotators

ACQUISITION_ARMS = {"random": ("random", "top"), "entropy": ("entropy", "per_prompt"),
                    "disagreement": ("disagreement", "per_prompt"),
                    "bald": ("bald", "per_prompt"), "bald + diverse": ("bald", "diverse")}


def label_efficiency(cfg: LabelEfficiencyConfig) -> Path:
    """Run every arm × seed through `active_learning` and write the report."""
    cfg, root = cfg.resolved(), Path(cfg.run_dir)
    start_study(root, cfg)
    tok = study_tokenizer(root)
    learner = Learner(LearnerConfig(), tok, SimulatedAnnotators().ids())
    arms = [a.strip() for a in cfg.arms.split(",") if a.strip()]
    for a in arms:
        if a not in ACQUISITION_ARMS:
            raise train.ConfigError(f"arms: {a!r} is not one of {list(ACQUISITION_ARMS)}")
    t0 = time.perf_counter()
    curves = {}
    for arm in arms:
        function, mode = ACQUISITION_ARMS[arm]
        for seed in int_list(cfg.seeds):
            run = root / "runs" / arm.replace(" + ", "_") / f"seed{seed}"

            def go():
                acfg = ActiveConfig(
                    run_dir=str(run), seed=seed, acquisition=function, batch_mode=mode,
                    rounds=cfg.rounds, initial_labels=cfg.initial_labels,
                    labels_per_round=cfg.labels_per_round, pool_size=cfg.pool_size,
                    steps_per_round=cfg.steps_per_round, initial_steps=cfg.initial_steps,
                    heldout_pairs=cfg.heldout_pairs,
                    annotator_temperatures=cfg.annotator_temperatures)
                return active_learning(acfg, tokenizer=tok, learner=learner,
                                       verbose=False).history
            curves[(arm, seed)] = cached_json(run / "curve.json", go)
            print(f"{arm} seed {seed}: accuracy {curves[(arm, seed)][-1]['accuracy']:.3f} at "
                  f"{curves[(arm, seed)][-1]['labels']} labels", flush=True)
    seconds = time.perf_counter() - t0
    seeds = int_list(cfg.seeds)
    labels = [r["labels"] for r in curves[(arms[0], seeds[0])]]
    summary = {}
    for arm in arms:
        acc = np.array([[r["accuracy"] for r in curves[(arm, s)]] for s in seeds])
        summary[arm] = {"labels": labels, "mean": acc.mean(0).tolist(),
                        "se": [mean_se(acc[:, j])[1] for j in range(acc.shape[1])],
                        "final": mean_se(acc[:, -1]),
                        "curve_mean": mean_se(acc[:, 1:].mean(1))}  # after acquisition starts
    base = "random" if "random" in summary else arms[0]
    target = summary[base]["mean"][-1]
    for arm in arms:
        summary[arm]["labels_to_target"] = first_reaching(labels, summary[arm]["mean"], target)
    base_need = summary[base]["labels_to_target"]  # the baseline's own (≤ its last count)
    for arm in arms:
        need = summary[arm]["labels_to_target"]
        summary[arm]["ratio"] = (base_need / need) if need else None
    band_plot(root / "plots" / "label_efficiency.png",
               {a: (labels, s["mean"], s["se"]) for a, s in summary.items()},
               xlabel="labels", ylabel="held-out accuracy (gold)",
               title="Label efficiency: mean ± s.e. over seeds",
               hline=(target, f"{base}'s final accuracy"))
    lines = ["# Label efficiency of acquisition functions", "",
             f"Built-in task, seeds {cfg.seeds}{' (quick)' if cfg.quick else ''}. Each run "
             f"starts from {cfg.initial_labels} random labels, then for {cfg.rounds} rounds "
             f"scores a fresh pool of {cfg.pool_size} candidate pairs with a "
             f"{LearnerConfig().ensemble}-head bootstrapped reward-model ensemble, acquires "
             f"{cfg.labels_per_round} pairs, has the simulated annotators (Bradley–Terry "
             f"temperatures {cfg.annotator_temperatures} around the gold judge) label them, and "
             f"trains {cfg.steps_per_round} more steps (warm start). Accuracy: how often the "
             f"ensemble's mean reward orders {cfg.heldout_pairs} fixed held-out pairs as the gold "
             "judge does (gold ties left out).", "",
             "![label efficiency](plots/label_efficiency.png)", "",
             f"| arm | final accuracy ({labels[-1]} labels) | mean accuracy over rounds 1–"
             f"{len(labels) - 1} | labels to reach {base}'s final {target:.3f} | {base}'s labels "
             "to it / arm's |", "|---|---|---|---|---|"]
    for arm, s in summary.items():
        m, se = s["final"]
        ratio = "—" if s["ratio"] is None else f"{s['ratio']:.2f}"
        cm, cse = s["curve_mean"]
        lines.append(f"| {arm} | {m:.3f} ± {se:.3f} | {cm:.3f} ± {cse:.3f} | "
                     f"{fmt_reached(s['labels_to_target'], 0, labels[0])} | "
                     f"{ratio} |")
    lines += ["", "Accuracy (mean ± s.e.) at each label count:", "",
              "| labels | " + " | ".join(summary) + " |",
              "|---|" + "---|" * len(summary)]
    for j, n in enumerate(labels):
        lines.append(f"| {n} | " + " | ".join(
            f"{s['mean'][j]:.3f} ± {s['se'][j]:.3f}" for s in summary.values()) + " |")
    lines += ["", f"Wall time: {seconds:.0f} s (runs already done were read back)."]
    return write_report(root, lines, {"config": dataclasses.asdict(cfg), "summary": summary,
                                "curves": {f"{a}|{s}": c for (a, s), c in curves.items()}})
