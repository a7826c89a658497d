"""The annotation-budget studies on the built-in task, judged by its gold judge: label
efficiency of acquisition functions, hybrid supervision (comparisons and ratings), and
annotator variance (labels per item, annotator noise, annotator models). Each writes
`report.md`, `results.json` and plots with mean ± standard error over seeds; runs already done
are read back, so a stopped study resumes.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.stats import spearmanr

from rlhf_jax import data, models, train
from rlhf_jax.reward.annotators import dawid_skene
from rlhf_jax.stages.layout import check_run_config, record_run_config
from rlhf_jax.studies.active import ActiveConfig, active_learning
from rlhf_jax.studies.learner import Learner, LearnerConfig
from rlhf_jax.studies.pairs import SimulatedAnnotators, builtin_pairs, gold_delta


def _seeds(spec: str) -> list[int]:
    return [int(s) for s in spec.split(",") if s.strip()]


def _ints(spec: str) -> list[int]:
    return [int(s) for s in spec.split(",") if s.strip()]


def _floats(spec: str) -> list[float]:
    return [float(s) for s in spec.split(",") if s.strip()]


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error (sample std / √n; 0 for one value)."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def _tokenizer(root: Path):
    path = root / "tokenizer"
    return (models.load_tokenizer(path) if (path / "tokenizer.json").is_file()
            else data.builtin.train_tokenizer(path))


def _cached(path: Path, fn):
    """fn()'s JSON result, computed once (a stopped study resumes from what it has)."""
    if path.is_file():
        return json.loads(path.read_text())
    out = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(path)
    return out


def _band_plot(path: Path, series: dict, *, xlabel: str, ylabel: str, title: str,
               logx: bool = False, hline=None) -> None:
    """Lines with ±1 s.e. bands: series = {name: (x, mean, se)}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    for i, (name, (x, m, se)) in enumerate(series.items()):
        x, m, se = (np.asarray(a, np.float64) for a in (x, m, se))
        ax.plot(x, m, "o-", ms=3, lw=1.5, color=f"C{i}", label=name)
        ax.fill_between(x, m - se, m + se, color=f"C{i}", alpha=0.2)
    if hline is not None:
        ax.axhline(hline[0], color="k", ls=":", lw=1, label=hline[1])
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def first_reaching(x: Sequence[float], y: Sequence[float], target: float):
    """The smallest x where y reaches `target`, linearly interpolated between grid points;
    None if it never does. Reached at the first grid point, the answer is only a bound (≤ x₀)."""
    for i, (xi, yi) in enumerate(zip(x, y)):
        if yi >= target:
            if i == 0:
                return float(xi)
            x0, y0 = x[i - 1], y[i - 1]
            return float(x0 + (target - y0) / (yi - y0) * (xi - x0))
    return None


def _fmt(v, digits: int = 0, first=None) -> str:
    if v is None:
        return "not reached"
    return f"≤ {v:.{digits}f}" if first is not None and v <= first else f"{v:.{digits}f}"


def _start(root: Path, cfg) -> None:
    """Refuse a study directory that holds results of a different config (they would be read
    back as this one's)."""
    root.mkdir(parents=True, exist_ok=True)
    config = dataclasses.asdict(cfg)
    check_run_config(root / "config.json", config)
    record_run_config(root / "config.json", config)


# ---- 1. label efficiency --------------------------------------------------------------------

ACQUISITION_ARMS = {"random": ("random", "top"), "entropy": ("entropy", "per_prompt"),
                    "disagreement": ("disagreement", "per_prompt"),
                    "bald": ("bald", "per_prompt"), "bald + diverse": ("bald", "diverse")}


@dataclasses.dataclass(frozen=True)
class LabelEfficiencyConfig:
    """Held-out accuracy against the number of labels for each acquisition function."""

    run_dir: str = "runs/study_label_efficiency"  # report, plots, results and every run
    seeds: str = "0,1,2"  # comma-separated seeds (>= 3 for error bands)
    arms: str = "random,entropy,disagreement,bald,bald + diverse"  # acquisition arms compared
    quick: bool = False  # tiny budgets, for the tests
    rounds: int = 10  # acquisition rounds
    initial_labels: int = 40  # random labels first
    labels_per_round: int = 40  # labels acquired per round
    pool_size: int = 800  # candidates per round
    steps_per_round: int = 60  # warm-start steps per round
    initial_steps: int = 150  # steps on the initial labels
    heldout_pairs: int = 1000  # gold-judged evaluation pairs
    annotator_temperatures: str = "0.15,0.3,0.6"  # simulated annotators

    def resolved(self) -> "LabelEfficiencyConfig":
        if not self.quick:
            return self
        return dataclasses.replace(self, rounds=2, initial_labels=16, labels_per_round=16,
                                   pool_size=96, steps_per_round=10, initial_steps=20,
                                   heldout_pairs=200)


def label_efficiency(cfg: LabelEfficiencyConfig) -> Path:
    """Run every arm × seed through `active_learning` and write the report."""
    cfg, root = cfg.resolved(), Path(cfg.run_dir)
    _start(root, cfg)
    tok = _tokenizer(root)
    learner = Learner(LearnerConfig(), tok, SimulatedAnnotators().ids())
    arms = [a.strip() for a in cfg.arms.split(",") if a.strip()]
    for a in arms:
        if a not in ACQUISITION_ARMS:
            raise train.ConfigError(f"arms: {a!r} is not one of {list(ACQUISITION_ARMS)}")
    t0 = time.perf_counter()
    curves = {}
    for arm in arms:
        function, mode = ACQUISITION_ARMS[arm]
        for seed in _seeds(cfg.seeds):
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
            curves[(arm, seed)] = _cached(run / "curve.json", go)
            print(f"{arm} seed {seed}: accuracy {curves[(arm, seed)][-1]['accuracy']:.3f} at "
                  f"{curves[(arm, seed)][-1]['labels']} labels", flush=True)
    seconds = time.perf_counter() - t0
    seeds = _seeds(cfg.seeds)
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
    _band_plot(root / "plots" / "label_efficiency.png",
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
                     f"{_fmt(s['labels_to_target'], 0, labels[0])} | "
                     f"{ratio} |")
    lines += ["", "Accuracy (mean ± s.e.) at each label count:", "",
              "| labels | " + " | ".join(summary) + " |",
              "|---|" + "---|" * len(summary)]
    for j, n in enumerate(labels):
        lines.append(f"| {n} | " + " | ".join(
            f"{s['mean'][j]:.3f} ± {s['se'][j]:.3f}" for s in summary.values()) + " |")
    lines += ["", f"Wall time: {seconds:.0f} s (runs already done were read back)."]
    return _write(root, lines, {"config": dataclasses.asdict(cfg), "summary": summary,
                                "curves": {f"{a}|{s}": c for (a, s), c in curves.items()}})


def _write(root: Path, lines: list[str], results: dict) -> Path:
    (root / "results.json").write_text(json.dumps(results, indent=2, default=str))
    report = root / "report.md"
    report.write_text("\n".join(lines) + "\n")
    print(f"report: {report}", flush=True)
    return report


# ---- 2. hybrid supervision ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class HybridConfig:
    """Equal annotation budgets spent on comparisons, on ratings, or half on each."""

    run_dir: str = "runs/study_hybrid"  # report, plots, results and every run
    seeds: str = "0,1,2"  # comma-separated seeds (>= 3 for error bands)
    quick: bool = False  # tiny budgets, for the tests
    budgets: str = "20,40,80,160,320"  # annotation budgets, in units of one comparison's cost
    comparison_cost: float = 1.0  # cost of one pairwise comparison
    rating_cost: float = 0.5  # cost of one Likert rating of one response
    rating_noise: float = 1.0  # std of the simulated raters' noise, in Likert points
    steps: int = 200  # optimiser steps per training run
    target: float = 0.0  # accuracy to reach (0: 95% of pairwise-only's best mean)
    heldout_pairs: int = 1000  # gold-judged evaluation pairs
    annotator_temperatures: str = "0.15,0.3,0.6"  # simulated annotators (comparisons)

    def resolved(self) -> "HybridConfig":
        if not self.quick:
            return self
        return dataclasses.replace(self, budgets="8,16", steps=20, heldout_pairs=200)


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
    _start(root, cfg)
    tok = _tokenizer(root)
    sim = SimulatedAnnotators(tuple(_floats(cfg.annotator_temperatures)))
    learner = Learner(LearnerConfig(), tok, sim.ids())
    budgets = _floats(cfg.budgets)
    t0 = time.perf_counter()
    acc = {}
    for seed in _seeds(cfg.seeds):
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
                acc[(arm, b, seed)] = _cached(root / "runs" / f"{key}.json", go)["accuracy"]
        print(f"seed {seed}: " + ", ".join(f"{a} {acc[(a, budgets[-1], seed)]:.3f}"
                                           for a in HYBRID_ARMS), flush=True)
    seconds = time.perf_counter() - t0
    seeds = _seeds(cfg.seeds)
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
    _band_plot(root / "plots" / "hybrid.png",
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
            f" | {_fmt(s['budget_to_target'], 1, budgets[0])} |")
    lines += ["", f"The reported \"up to 30% fewer annotations\" with ratings mixed in "
              f"{verdict}.", "", f"Wall time: {seconds:.0f} s."]
    return _write(root, lines, {"config": dataclasses.asdict(cfg), "summary": summary,
                                "target": target, "saving": saving})


# ---- 3. annotator variance ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class AnnotatorVarianceConfig:
    """More labels per item or more items, at several annotator noise levels; and annotator
    models on a mixed-reliability crowd."""

    run_dir: str = "runs/study_annotators"  # report, plots, results and every run
    seeds: str = "0,1,2"  # comma-separated seeds (>= 3 for error bands)
    quick: bool = False  # tiny budgets, for the tests
    total_labels: int = 450  # labels bought in every condition
    labels_per_item: str = "1,3,5"  # redundancy levels compared
    noise: str = "0.3,1.0,3.0"  # annotator temperatures compared (all annotators alike)
    crowd: str = "0.1,0.3,0.9,2.7,8.1"  # mixed crowd for the annotator-model comparison
    crowd_items: int = 150  # items of the crowd comparison, each labelled by 3 of the crowd
    steps: int = 200  # optimiser steps per training run
    heldout_pairs: int = 1000  # gold-judged evaluation pairs

    def resolved(self) -> "AnnotatorVarianceConfig":
        if not self.quick:
            return self
        return dataclasses.replace(self, total_labels=30, labels_per_item="1,3", noise="0.3,3.0",
                                   crowd_items=30, steps=20, heldout_pairs=200)


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
    _start(root, cfg)
    tok = _tokenizer(root)
    crowd = SimulatedAnnotators(tuple(_floats(cfg.crowd)))
    learner = Learner(LearnerConfig(), tok, crowd.ids())
    aware = Learner(LearnerConfig(annotator_model="temperature"), tok, crowd.ids())
    reps, noises, seeds = _ints(cfg.labels_per_item), _floats(cfg.noise), _seeds(cfg.seeds)
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
                grid[(t, r, seed)] = _cached(
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
        res = _cached(root / "runs" / f"crowd/seed{seed}.json", crowd_runs)
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
    _band_plot(root / "plots" / "redundancy.png", series,
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
    return _write(root, lines, {
        "config": dataclasses.asdict(cfg),
        "grid": {f"{t}|{r}|{s}": v for (t, r, s), v in grid.items()},
        "crowd": {str(s): v for s, v in crowd_acc.items()}, "crowd_summary": crowd_summary,
        "spearman_dawid_skene": rho_ds, "spearman_learned_temperature": rho_tau})
