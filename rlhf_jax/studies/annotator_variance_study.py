"""The annotator-variance study on the built-in task: more labels per item or more items at
several annotator noise levels, and annotator models (majority vote, Dawid–Skene, learned
temperatures) on a mixed-reliability crowd, judged by held-out accuracy against the gold judge
(mean ± standard error over seeds); writes `report.md`, `results.json` and a plot, and reads
runs already done back, so a stopped study resumes."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from rlhf_jax.reward.annotators import dawid_skene
from rlhf_jax.studies.common import (band_plot, cached_json, float_list, int_list, mean_se,
                                     start_study, study_tokenizer, write_report)
from rlhf_jax.studies.configs.budgets import AnnotatorVarianceConfig
from rlhf_jax.studies.learner import Learner, LearnerConfig
from rlhf_jax.studies.pairs import SimulatedAnnotators, builtin_pairs, gold_delta


def _majority(records_by_item: list[list[dict]]) -> list[dict]:
    """One record per item by majority vote over its labels (ties left out)."""
    out = []
    for recs in records_by_item:
        first = sum(r["ranks"][0] == 0 for r in recs)
        if 2 * first != len(recs):
            out.append(dict(recs[0], ranks=[0, 1] if 2 * first > len(recs) else [1, 0],
                            annotator_id=""))
    return out


def annotator_variance(cfg: AnnotatorVarianceConfig) -> Path:
    """Redundancy × noise grid, then unweighted vs majority vs Dawid–Skene vs learned
    temperatures on a mixed crowd; write the report."""
    cfg, root = cfg.resolved(), Path(cfg.run_dir)
    start_study(root, cfg)
    tok = study_tokenizer(root)
    crowd = SimulatedAnnotators(tuple(float_list(cfg.crowd)))
    learner = Learner(LearnerConfig(), tok, crowd.ids())
    aware = Learner(LearnerConfig(annotator_model="temperature"), tok, crowd.ids())
    reps, noises, seeds = int_list(cfg.labels_per_item), float_list(cfg.noise), int_list(cfg.seeds)
    t0 = time.perf_counter()
    grid, crowd_acc, crowd_rel = {}, {}, {}
    for seed in seeds:
        heldout = builtin_pairs(np.random.default_rng([seed, 7]), cfg.heldout_pairs)
        gold = gold_delta(heldout)
        for t in noises:
            sim = SimulatedAnnotators((t,) * max(reps))
            for r in reps:
                def go():
                    rng = np.random.default_rng([seed, r, int(t * 1000)])
                    items = builtin_pairs(rng, cfg.total_labels // r)
                    records = [rec for p in items for rec in sim.label(
                        [p] * r, rng, who=list(range(r)))]
                    learner.init(seed)
                    learner.train(records, cfg.steps, seed=seed)
                    return {"accuracy": learner.accuracy(heldout, gold)}
                grid[(t, r, seed)] = cached_json(
                    root / "runs" / f"grid/t{t:g}_r{r}_seed{seed}.json", go)["accuracy"]

        def crowd_runs():
            rng = np.random.default_rng([seed, 99])
            items = builtin_pairs(rng, cfg.crowd_items)
            by_item = [crowd.label([p] * 3, rng, who=list(rng.choice(len(crowd.temperatures), 3,
                                                                       replace=False)))
                       for p in items]
            flat = [rec for recs in by_item for rec in recs]
            ids = crowd.ids()
            ds = dawid_skene([i for i, recs in enumerate(by_item) for _ in recs],
                             [ids.index(r["annotator_id"]) for r in flat],
                             [int(r["ranks"][0] == 0) for r in flat],
                             num_annotators=len(ids))
            ds_records = [dict(recs[0], ranks=[0, 1] if ds["posterior"][i, 1] > 0.5 else [1, 0],
                               annotator_id="")
                          for i, recs in enumerate(by_item)]
            out = {}
            for name, records, lrn in (("all labels, unweighted", flat, learner),
                                       ("majority vote", _majority(by_item), learner),
                                       ("Dawid–Skene reliability-weighted vote", ds_records,
                                        learner),
                                       ("learned annotator temperatures", flat, aware)):
                lrn.init(seed)
                lrn.train(records, cfg.steps, seed=seed)
                out[name] = lrn.accuracy(heldout, gold)
            learned = aware.annotator_parameters()
            out["_ds_reliability"] = ds["accuracy"].tolist()
            out["_learned_tau"] = [learned[a][0] for a in ids]
            return out
        res = cached_json(root / "runs" / f"crowd/seed{seed}.json", crowd_runs)
        crowd_acc[seed] = {k: v for k, v in res.items() if not k.startswith("_")}
        crowd_rel[seed] = (res["_ds_reliability"], res["_learned_tau"])
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in crowd_acc[seed].items()),
              flush=True)
    seconds = time.perf_counter() - t0
    series = {}
    for t in noises:
        a = np.array([[grid[(t, r, s)] for r in reps] for s in seeds])
        series[f"temperature {t:g}"] = (reps, a.mean(0).tolist(),
                                        [mean_se(a[:, j])[1] for j in range(len(reps))])
    band_plot(root / "plots" / "redundancy.png", series,
               xlabel=f"labels per item ({cfg.total_labels} labels in all)",
               ylabel="held-out accuracy (gold)",
               title="More labels per item or more items? mean ± s.e.")
    temps = np.asarray(crowd.temperatures)
    rho_ds = [spearmanr(crowd_rel[s][0], -temps).statistic for s in seeds]
    rho_tau = [spearmanr(crowd_rel[s][1], temps).statistic for s in seeds]
    arms = list(crowd_acc[seeds[0]])
    crowd_summary = {a: mean_se([crowd_acc[s][a] for s in seeds]) for a in arms}
    lines = ["# Annotator variance and annotator models", "",
             f"Built-in task, seeds {cfg.seeds}{' (quick)' if cfg.quick else ''}; reward models "
             f"train {cfg.steps} steps from scratch; accuracy on held-out gold-judged pairs.", "",
             "## More labels per item, or more items?", "",
             f"{cfg.total_labels} labels in every cell: {cfg.total_labels} items labelled once, "
             "or a third as many labelled three times, and so on, by annotators of equal noise "
             "(Bradley–Terry temperature); every label is a training record.", "",
             "![redundancy](plots/redundancy.png)", "",
             "| temperature | " + " | ".join(f"{r} per item" for r in reps) + " | best |",
             "|---|" + "---|" * (len(reps) + 1)]
    for name, (x, m, se) in series.items():
        best = reps[int(np.argmax(m))]
        lines.append(f"| {name.split()[-1]} | " + " | ".join(
            f"{a:.3f} ± {b:.3f}" for a, b in zip(m, se)) + f" | {best} per item |")
    lines += ["", "## Annotator models on a mixed crowd", "",
              f"{cfg.crowd_items} items, each labelled by 3 of {len(temps)} annotators with "
              f"temperatures {cfg.crowd} (known to the simulation, not to the models).", "",
              "| training labels | accuracy |", "|---|---|"]
    for a, (m, se) in crowd_summary.items():
        lines.append(f"| {a} | {m:.3f} ± {se:.3f} |")
    lines += ["", f"Dawid–Skene reliability from agreement alone ranks the annotators with "
              f"Spearman {np.mean(rho_ds):.2f} (per seed {', '.join(f'{r:.2f}' for r in rho_ds)}"
              f") against their true reliability; the learned temperatures with "
              f"{np.mean(rho_tau):.2f} ({', '.join(f'{r:.2f}' for r in rho_tau)}).",
              "", f"Wall time: {seconds:.0f} s."]
    return write_report(root, lines, {
        "config": dataclasses.asdict(cfg),
        "grid": {f"{t}|{r}|{s}": v for (t, r, s), v in grid.items()},
        "crowd": {str(s): v for s, v in crowd_acc.items()}, "crowd_summary": crowd_summary,
        "spearman_dawid_skene": rho_ds, "spearman_learned_temperature": rho_tau})
