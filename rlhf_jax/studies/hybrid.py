"""The hybrid-supervision study on the built-in task: equal annotation budgets spent on
comparisons, on Likert ratings, or half on each, judged by held-out accuracy against the gold
judge (mean ± standard error over seeds); writes `report.md`, `results.json` and a plot, and
reads runs already done back, so a stopped study resumes."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from rlhf_jax.studies.common import (band_plot, cached_json, first_reaching, float_list,
                                     fmt_reached, int_list, mean_se, start_study,
                                     study_tokenizer, write_report)
from rlhf_jax.studies.configs.budgets import HybridConfig
from rlhf_jax.studies.learner import Learner, LearnerConfig
from rlhf_jax.studies.pairs import SimulatedAnnotators, builtin_pairs, gold_delta


HYBRID_ARMS = ("pairwise only", "pairwise + ratings", "ratings only")


def _hybrid_labels(arm: str, budget: float, cfg: HybridConfig, sim: SimulatedAnnotators,
                   rng: np.random.Generator) -> list[dict]:
    share = {"pairwise only": 1.0, "pairwise + ratings": 0.5, "ratings only": 0.0}[arm]
    n_cmp = int(budget * share / cfg.comparison_cost)
    n_rate = int(budget * (1 - share) / cfg.rating_cost)
    records = sim.label(builtin_pairs(rng, n_cmp), rng) if n_cmp else []
    if n_rate:
        items = [(p, a) for p, a, _ in builtin_pairs(rng, n_rate)]
        records += sim.rate(items, rng, noise=cfg.rating_noise)
    return records


def hybrid_supervision(cfg: HybridConfig) -> Path:
    """Train one reward model per arm × budget × seed from scratch; write the report."""
    cfg, root = cfg.resolved(), Path(cfg.run_dir)
    start_study(root, cfg)
    tok = study_tokenizer(root)
    sim = SimulatedAnnotators(tuple(float_list(cfg.annotator_temperatures)))
    learner = Learner(LearnerConfig(), tok, sim.ids())
    budgets = float_list(cfg.budgets)
    t0 = time.perf_counter()
    acc = {}
    for seed in int_list(cfg.seeds):
        heldout = builtin_pairs(np.random.default_rng([seed, 7]), cfg.heldout_pairs)
        gold = gold_delta(heldout)
        for arm in HYBRID_ARMS:
            for b in budgets:
                def go():
                    rng = np.random.default_rng([seed, int(b * 1000), HYBRID_ARMS.index(arm)])
                    records = _hybrid_labels(arm, b, cfg, sim, rng)
                    learner.init(seed)
                    learner.train(records, cfg.steps, seed=seed)
                    return {"accuracy": learner.accuracy(heldout, gold),
                            "records": len(records)}
                key = f"{arm.replace(' ', '_').replace('+', 'and')}/b{b:g}/seed{seed}"
                acc[(arm, b, seed)] = cached_json(root / "runs" / f"{key}.json", go)["accuracy"]
        print(f"seed {seed}: " + ", ".join(f"{a} {acc[(a, budgets[-1], seed)]:.3f}"
                                           for a in HYBRID_ARMS), flush=True)
    seconds = time.perf_counter() - t0
    seeds = int_list(cfg.seeds)
    summary = {}
    for arm in HYBRID_ARMS:
        a = np.array([[acc[(arm, b, s)] for b in budgets] for s in seeds])
        summary[arm] = {"mean": a.mean(0).tolist(),
                        "se": [mean_se(a[:, j])[1] for j in range(len(budgets))]}
    target = cfg.target or 0.95 * max(summary["pairwise only"]["mean"])
    for arm in HYBRID_ARMS:
        summary[arm]["budget_to_target"] = first_reaching(budgets, summary[arm]["mean"], target)
    base, hybrid = (summary[a]["budget_to_target"] for a in ("pairwise only",
                                                              "pairwise + ratings"))
    bounded = base is not None and base <= budgets[0]  # only a bound: no ratio to give
    saving = None if base is None or hybrid is None or bounded else 1.0 - hybrid / base
    band_plot(root / "plots" / "hybrid.png",
               {a: (budgets, s["mean"], s["se"]) for a, s in summary.items()},
               xlabel=f"annotation budget (comparison = {cfg.comparison_cost:g}, rating = "
                      f"{cfg.rating_cost:g})", ylabel="held-out accuracy (gold)",
               title="Hybrid supervision at equal budgets: mean ± s.e.", logx=True,
               hline=(target, "target"))
    if saving is None:
        verdict = ("cannot be judged here: pairwise-only reached the target at the smallest "
                   "budget" if bounded else "cannot be judged here: an arm never reached the "
                   "target")
    else:
        holds = ("holds" if saving >= 0.30 else "partly holds" if saving > 0 else
                 "does not hold")
        verdict = (f"{holds} here: mixing ratings in {'saves' if saving >= 0 else 'costs'} "
                   f"{abs(saving) * 100:.0f}% of the budget pairwise-only comparisons need "
                   "to reach the target")
    lines = ["# Hybrid supervision: comparisons, ratings, or both", "",
             f"Built-in task, seeds {cfg.seeds}{' (quick)' if cfg.quick else ''}. A budget B buys "
             f"B/{cfg.comparison_cost:g} comparisons (simulated annotators, Bradley–Terry "
             f"temperatures {cfg.annotator_temperatures}), B/{cfg.rating_cost:g} Likert ratings "
             f"of single responses (1–7, gold + N(0, {cfg.rating_noise:g}²), rounded), or half "
             f"of each. Each reward model trains {cfg.steps} steps from scratch with the "
             "Bradley–Terry loss on comparisons plus the squared error on ratings (mapped to "
             "[−1, 1]); accuracy on held-out gold-judged pairs.", "",
             "![hybrid](plots/hybrid.png)", "",
             "| arm | " + " | ".join(f"B={b:g}" for b in budgets) + f" | budget to reach "
             f"{target:.3f} |", "|---|" + "---|" * (len(budgets) + 1)]
    for arm, s in summary.items():
        lines.append(f"| {arm} | " + " | ".join(
            f"{m:.3f} ± {e:.3f}" for m, e in zip(s["mean"], s["se"])) +
            f" | {fmt_reached(s['budget_to_target'], 1, budgets[0])} |")
    lines += ["", f"The reported \"up to 30% fewer annotations\" with ratings mixed in "
              f"{verdict}.", "", f"Wall time: {seconds:.0f} s."]
    return write_report(root, lines, {"config": dataclasses.asdict(cfg), "summary": summary,
                                "target": target, "saving": saving})
