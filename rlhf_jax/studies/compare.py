"""The method comparison as a library function: `compare_methods(CompareConfig(...))`.

For each seed, one base run (SFT → simulated comparisons → reward model) is shared by every
method, which then learns from the same comparisons (offline methods) or the same reward model
(PPO, RLOO, GRPO, best-of-n), over a sweep of its KL-controlling setting. Each method's sweep
runs in its own process, so its peak memory is its own. The report puts the gold score of every
setting against its KL to the starting policy on one plot (Gao et al. 2022, fig. 1; Rafailov et
al. 2023, fig. 2), tabulates gains, KL, time and memory, and the alignment metrics (win rate
against the starting policy, profanity rate, distinct-1/2, length), and follows one setting's
gold score over training to show over-optimisation.
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from rlhf_jax import eval as rl_eval
from rlhf_jax.eval.report import METHOD_NAMES
from rlhf_jax.stages.layout import PipelineLayout, check_run_config, record_run_config
from rlhf_jax.stages.offline import train_offline
from rlhf_jax.stages.pipeline import (METHODS, PPO_FAMILY, PipelineConfig, _replace,
                                      evaluate_before_after, run_pipeline, stage_configs)
from rlhf_jax.stages.ppo import train_ppo

# Each method's sweep: the setting that trades reward against staying near the start, and its
# values (weakest pull away from the reference first). Budgets are the pipeline's defaults:
# PPO / RLOO / GRPO 150 iterations of 32 sampled responses (RLOO / GRPO: `group_size` = 4 for
# each of 8 prompts), the offline methods 200 steps of 32 rows (a comparison's two responses
# each), best-of-n n samples per evaluation prompt; the report states them.
SWEEPS = {
    "ppo": ("ppo.kl.beta", (0.1, 0.02, 0.0)),
    "rloo": ("ppo.kl.beta", (0.1, 0.02)),
    "grpo": ("ppo.kl.beta", (0.1, 0.02)),
    "best_of_n": ("best_of_n", (2, 4, 16)),
    "dpo": ("offline.loss.beta", (0.5, 0.1)),
    "cdpo": ("offline.loss.beta", (0.5, 0.1)),
    "rdpo": ("offline.loss.beta", (0.5, 0.1)),
    "ipo": ("offline.loss.beta", (0.5, 0.1)),
    "kto": ("offline.loss.beta", (0.5, 0.1)),
    "simpo": ("offline.loss.simpo_beta", (1.0, 2.5)),
    "orpo": ("offline.loss.orpo_lambda", (0.1, 1.0)),
    "awr": ("offline.loss.temperature", (1.0, 0.25)),
    "filtered_bc": ("offline.loss.top_fraction", (1.0, 0.5)),
}
# alignment metrics of the responses, besides gold, proxy and KL, in the second table
TEXT_METRICS = ("profanity_rate", "distinct_1", "distinct_2", "length")
# the setting whose gold score is followed over its training iterations
OVEROPTIMISATION = ("ppo", 0.0)
QUICK = {"sft.steps": 30, "comparisons": 300, "reward.steps": 40, "reward.eval_every": 20,
         "ppo.steps": 8, "offline.steps": 16, "offline.eval_every": 8, "eval_samples": 32}


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """The study: `methods` (comma-separated, from `stages.pipeline.METHODS`) over `seeds`, on
    the built-in task. The simulated annotators judge by `annotator_judge`; the methods are
    scored by `gold` (by default a judge the annotators' signal only partly captures, so that
    over-optimisation can show). `quick`: one setting per method and tiny budgets."""

    run_dir: str = "runs/compare"  # where the study's runs, report.md and plots/ go
    seeds: str = "0,1"  # comma-separated seeds: one base run and every method per seed
    methods: str = ",".join(METHODS)  # comma-separated methods to compare
    gold: str = "vader_diverse"  # the judge that scores the methods (eval.TEXT_TERMS)
    annotator_judge: str = "vader"  # the simulated annotators' judge (eval.TEXT_TERMS)
    quick: bool = False  # one setting per method, tiny budgets (a few minutes on 2 cores)
    # runs at once, each in its own process (> 1 shortens the study on several cores, but the
    # reported times then include the runs' competition for them)
    workers: int = 1

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"workers={self.workers}: expected >= 1")
        for name, items in (("seeds", self.seeds.split(",")), ("methods", self.method_list)):
            if len(set(items)) != len(items):
                raise ValueError(f"{name}={getattr(self, name)!r} names one twice")
        unknown = [m for m in self.method_list if m not in METHODS]
        if unknown or not self.method_list:
            raise ValueError(f"methods={self.methods!r}: expected some of {', '.join(METHODS)}")
        try:
            [int(s) for s in self.seeds.split(",")]
        except ValueError:
            raise ValueError(f"seeds={self.seeds!r}: expected comma-separated integers") from None
        for name in ("gold", "annotator_judge"):
            if getattr(self, name) not in rl_eval.TEXT_TERMS:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of "
                                 f"{sorted(rl_eval.TEXT_TERMS)}")

    @property
    def method_list(self) -> list[str]:
        """The methods, in order."""
        return [m for m in self.methods.split(",") if m]

    @property
    def seed_list(self) -> list[int]:
        """The seeds, in order."""
        return [int(s) for s in self.seeds.split(",")]


def sweep(cfg: CompareConfig, method: str) -> tuple[str, tuple]:
    """The swept key and the values this study runs (quick: one, PPO's the unregularised)."""
    key, values = SWEEPS[method]
    if cfg.quick:
        values = (OVEROPTIMISATION[1],) if method == OVEROPTIMISATION[0] else values[:1]
    return key, values


def base_config(cfg: CompareConfig, seed: int) -> PipelineConfig:
    """The pipeline whose SFT policy, comparisons and reward model every method of `seed`
    shares (its own best-of-n run is not used)."""
    root = Path(cfg.run_dir)
    base = _replace(PipelineConfig(), {
        "run_dir": str(root / f"seed{seed}" / "base"), "seed": seed, "gold": cfg.gold,
        "annotator_judge": cfg.annotator_judge, "method": "best_of_n", "best_of_n": 1,
        "compile_cache": str(root / "compile_cache")})
    return _replace(base, QUICK) if cfg.quick else base


def run_method(cfg: CompareConfig, seed: int, method: str) -> dict:
    """Every setting of `method`'s sweep on `seed`'s base run: the alignment metrics before
    and after (gold, proxy, KL, profanity rate, distinct-1/2, length; after also the win rate
    against the starting policy), the seconds each took, this process's peak memory, and for
    the over-optimisation setting the per-iteration KL and gold score."""
    base = base_config(cfg, seed)
    layout = PipelineLayout(base.run_dir)
    gold_fn = rl_eval.TEXT_TERMS[cfg.gold]
    key, values = sweep(cfg, method)
    results = []
    for value in values:
        run_dir = Path(cfg.run_dir) / f"seed{seed}" / f"{method}-{value}"
        overrides = {"run_dir": str(run_dir), "method": method, key: value}
        if method in ("rloo", "grpo"):
            overrides["ppo.batch_size"] = base.ppo.batch_size // base.group_size
        pcfg = _replace(base, overrides)
        run = PipelineLayout(pcfg.run_dir)
        _, _, ppo_cfg, off_cfg = stage_configs(pcfg, run, str(layout.stage("sft").export),
                                               str(layout.comparisons))
        ppo_cfg = dataclasses.replace(ppo_cfg, reward_dir=str(layout.stage("reward").export))
        start = time.perf_counter()
        trained, rows = None, []
        if method in PPO_FAMILY:
            trained = train_ppo(ppo_cfg).export_dir
            rows = run.stage("ppo").read_metrics()
        elif method != "best_of_n":
            trained = train_offline(off_cfg).export_dir
        seconds = time.perf_counter() - start
        ev = evaluate_before_after(pcfg, ppo_cfg, trained, gold_fn)
        entry = {"method": method, "key": key, "value": value, "seed": seed,
                 "train_seconds": seconds,
                 "eval_seconds": time.perf_counter() - start - seconds,
                 **{f"{w}_{q}": ev[w]["summary"][q] for w in ("before", "after")
                    for q in ("gold", "proxy", "kl") + TEXT_METRICS},
                 "after_win_rate": ev["after"]["summary"]["win_rate"]}
        if (method, value) == OVEROPTIMISATION:
            gk = f"reward_terms/{cfg.gold}"
            entry["trajectory"] = [{"step": r["step"], "kl": r["kl/sequence"], "gold": r[gk],
                                    "proxy": r["score/reward_model"]}
                                   for r in rows if "kl/sequence" in r and gk in r]
        results.append(entry)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"results": results, "peak_rss_mib": peak}


def _child(cfg: CompareConfig, seed: int, what: str, out: Path) -> dict:
    """Run `what` ("base" or a method) for `seed` in a fresh process; its JSON result is saved
    in `out` (a rerun of the study reuses it)."""
    if out.is_file():
        return json.loads(out.read_text())
    spec = json.dumps({"config": dataclasses.asdict(cfg), "seed": seed, "what": what,
                       "out": str(out)})
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "import json, sys; from rlhf_jax.studies."
                           "compare import _worker; _worker(json.loads(sys.argv[1]))", spec],
                          capture_output=True, text=True)
    log = out.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} (seed {seed}) failed; its output is in {log}:\n"
                           + proc.stderr[-2000:])
    result = json.loads(out.read_text())
    print(f"seed {seed} {what}: {time.perf_counter() - start:.0f} s", flush=True)
    return result


def _worker(spec: dict) -> None:
    cfg = CompareConfig(**spec["config"])
    if spec["what"] == "base":
        r = run_pipeline(base_config(cfg, spec["seed"]))
        result = {"seconds": r.seconds,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    else:
        result = run_method(cfg, spec["seed"], spec["what"])
    out = Path(spec["out"])
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)


def _mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def _pooled(stats: list[dict]) -> tuple[float, float]:
    """Mean ± s.e. of one metric over seeds (each {"mean", "stderr"}): the standard error
    between the seeds' means, or with one seed that evaluation's own standard error."""
    if len(stats) == 1:
        return stats[0]["mean"], stats[0]["stderr"]
    return _mean_se([s["mean"] for s in stats])


def _metrics_table(rows: list[dict], start: dict) -> list[str]:
    """The alignment-metrics table: win rate against the start and the text metrics, for the
    starting policy and every setting (— where a result predates a metric)."""
    cell = lambda v, d=3: "—" if v is None else f"{v[0]:.{d}f} ± {v[1]:.{d}f}"  # noqa: E731
    lines = ["| method | setting | win rate vs start (gold) | profanity rate | distinct-1 | "
             "distinct-2 | length (tokens) |", "|---|---|---|---|---|---|---|",
             "| starting policy (SFT) | — | — | " + " | ".join(
                 cell(start.get(q), 1 if q == "length" else 3) for q in TEXT_METRICS) + " |"]
    for r in rows:
        lines.append(f"| {METHOD_NAMES.get(r['method'], r['method'])} | "
                     f"{r['key'].split('.')[-1]} = {r['value']} | "
                     + " | ".join(cell(r.get(q), 1 if q == "length" else 3)
                                  for q in ("win_rate",) + TEXT_METRICS) + " |")
    return lines


def rises_then_falls(trajectory: list[dict], window: int = 5, margin: float = 0.05) -> dict:
    """Whether the gold score's running mean (over `window` iterations) climbs by more than
    `margin` above its start and then ends more than `margin` below its peak; with the KL at
    the peak and at the end."""
    gold = np.array([t["gold"] for t in trajectory], np.float64)
    kl = np.array([t["kl"] for t in trajectory], np.float64)
    if len(gold) < window:
        return {"observed": False, "reason": f"{len(gold)} iterations are too few"}
    kernel = np.ones(window) / window
    g, k = np.convolve(gold, kernel, "valid"), np.convolve(kl, kernel, "valid")
    peak = int(np.argmax(g))
    out = {"start": float(g[0]), "peak": float(g[peak]), "end": float(g[-1]),
           "kl_at_peak": float(k[peak]), "kl_at_end": float(k[-1])}
    out["observed"] = bool(g[peak] - g[0] > margin and g[peak] - g[-1] > margin)
    return out


def _plots(rows: list[dict], before: dict, trajectories: dict, gold: str, out_dir: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    markers = "osD^v<>pP*Xhd"
    ax.errorbar([0.0], [before["gold"][0]], yerr=[before["gold"][1]], fmt="k*", ms=12,
                label="starting policy (SFT)")
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        pts = [r for r in rows if r["method"] == method]
        x = [np.sqrt(max(r["kl"][0], 0.0)) for r in pts]
        ax.errorbar(x, [r["gold"][0] for r in pts], yerr=[r["gold"][1] for r in pts],
                    fmt=f"{markers[i % len(markers)]}-", ms=6, capsize=2, lw=1,
                    label=METHOD_NAMES.get(method, method))
    ax.set(xlabel="√KL(π ‖ π_SFT), √nats per response", ylabel=f"gold score ({gold})",
           title="Gold score against KL: each method over its sweep, mean ± s.e. over seeds")
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(out_dir / "frontier.png", dpi=110)
    plt.close(fig)
    if trajectories:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for seed, traj in trajectories.items():
            kl = np.array([t["kl"] for t in traj])
            g = np.array([t["gold"] for t in traj])
            ax.plot(np.sqrt(np.maximum(kl, 0)), g, "o", ms=2, alpha=0.35, color=f"C{seed}")
            if len(g) >= 5:
                k5, g5 = (np.convolve(x, np.ones(5) / 5, "valid") for x in (kl, g))
                ax.plot(np.sqrt(np.maximum(k5, 0)), g5, lw=2, color=f"C{seed}",
                        label=f"seed {seed}, running mean of 5")
        ax.set(xlabel="√KL per response over PPO iterations (β = 0)",
               ylabel=f"gold score ({gold})", title="Over-optimisation: PPO without a KL leash")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "overoptimisation.png", dpi=110)
        plt.close(fig)


def write_comparison_report(cfg: CompareConfig, results: list[dict], peaks: dict,
                            seconds: float) -> Path:
    """The Markdown report (and plots) of the study's `results` (`run_method` entries)."""
    root = Path(cfg.run_dir)
    rows, before = [], {}
    for (method, value) in dict.fromkeys((r["method"], r["value"]) for r in results):
        per_seed = [r for r in results if r["method"] == method and r["value"] == value]
        gain = lambda q: [r[f"after_{q}"]["mean"] - r[f"before_{q}"]["mean"]  # noqa: E731
                          for r in per_seed]
        rows.append({"method": method, "key": per_seed[0]["key"], "value": value,
                     "gold": _mean_se([r["after_gold"]["mean"] for r in per_seed]),
                     "gold_gain": _mean_se(gain("gold")), "proxy_gain": _mean_se(gain("proxy")),
                     "kl": _mean_se([r["after_kl"]["mean"] for r in per_seed]),
                     "seconds": float(np.mean([r["train_seconds"] for r in per_seed])),
                     "eval_seconds": float(np.mean([r.get("eval_seconds", float("nan"))
                                                    for r in per_seed])),
                     "peak": max(peaks[(method, r["seed"])] for r in per_seed),
                     "seeds": len(per_seed)})
        for q in ("win_rate",) + TEXT_METRICS:  # results of an earlier version may lack them
            if all(f"after_{q}" in r for r in per_seed):
                rows[-1][q] = _pooled([r[f"after_{q}"] for r in per_seed])
    first = [r for r in results
             if (r["method"], r["value"]) == (results[0]["method"], results[0]["value"])]
    before["gold"] = _mean_se([r["before_gold"]["mean"] for r in first])
    start = {q: _pooled([r[f"before_{q}"] for r in first]) for q in TEXT_METRICS
             if all(f"before_{q}" in r for r in first)}
    trajectories = {r["seed"]: r["trajectory"] for r in results if r.get("trajectory")}
    base = base_config(cfg, cfg.seed_list[0])
    _plots(rows, before, trajectories, cfg.gold, root / "plots")
    verdicts = {seed: rises_then_falls(t) for seed, t in trajectories.items()}
    lines = [
        "# Method comparison", "",
        f"Built-in task, seeds {cfg.seeds}"
        + (" (quick: one setting per method, tiny budgets)" if cfg.quick else "") + ". "
        f"For each seed one SFT policy, one set of comparisons by simulated annotators judging "
        f"by `{cfg.annotator_judge}`, and one reward model trained on them are shared by every "
        f"method; the gold judge is `{cfg.gold}`. Every number is a mean over the "
        f"{len(cfg.seed_list)} seed(s) ± the standard error between seeds; each seed's value is "
        "itself a mean over the evaluation prompts. Study time "
        f"{seconds / 60:.1f} min" + (f" with {cfg.workers} runs at once (their times include "
                                     "competing for the cores)" if cfg.workers > 1 else "") +
        ".", "",
        "![gold vs KL](plots/frontier.png)", "",
        "| method | setting | gold after | gold gain | proxy gain | KL (nats) | train s "
        "| eval s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {METHOD_NAMES.get(r['method'], r['method'])} | {r['key'].split('.')[-1]} = "
            f"{r['value']} | {r['gold'][0]:.3f} ± {r['gold'][1]:.3f} | "
            f"{r['gold_gain'][0]:+.3f} ± {r['gold_gain'][1]:.3f} | "
            f"{r['proxy_gain'][0]:+.3f} ± {r['proxy_gain'][1]:.3f} | "
            f"{r['kl'][0]:.2f} ± {r['kl'][1]:.2f} | {r['seconds']:.1f} | "
            f"{r['eval_seconds']:.1f} | {r['peak']:.0f} |")
    lines += ["", f"Starting policy's gold score: {before['gold'][0]:.3f} ± "
              f"{before['gold'][1]:.3f}. Budgets: PPO, RLOO and GRPO "
              f"{base.ppo.steps} iterations of {base.ppo.batch_size} sampled responses; the "
              f"offline methods {base.offline.steps} steps of {base.offline.batch_size} "
              "rows; best-of-n no training. KL of best-of-n is the analytic log n − (n − 1)/n, "
              "exact for distinct samples and an upper bound when samples repeat (Beirami et "
              "al. 2024). Train seconds include compilation (shared through the compilation "
              "cache, so the first setting of a shape pays it); eval seconds are the before "
              "and after evaluation (for best-of-n, its n samples per prompt); peak RSS is the "
              "resident memory of the process that ran the method's sweep (host memory: JAX "
              "runs on the CPU here). A method rerun after a crash resumes its finished "
              "settings, whose times then are not their training's.",
              "", "## Alignment metrics", "",
              "The same evaluation's responses after each method: win rate against the "
              "starting policy's response to the same prompt judged by the gold judge (ties "
              "count half), the share that alt-profanity-check's packaged classifier flags "
              "(P > 0.5), distinct-n (distinct n-grams over the responses / their total words, Li "
              "et al. 2016) and the response length. With several seeds ± is the standard error "
              "between seeds; with one seed it is that evaluation's own standard error (std / "
              "√n over prompts; for distinct-n a bootstrap over responses, "
              f"{rl_eval.metrics.BOOTSTRAP_RESAMPLES} resamples).", "",
              *_metrics_table(rows, start), "",
              "## Over-optimisation", ""]
    if trajectories:
        lines += [f"Setting: PPO with β = {OVEROPTIMISATION[1]} (no KL penalty) against the "
                  f"reward model, followed over its iterations and scored by `{cfg.gold}` while "
                  f"the annotators judged by `{cfg.annotator_judge}`.", "",
                  "![over-optimisation](plots/overoptimisation.png)", ""]
        for seed, v in verdicts.items():
            if "reason" in v:
                lines.append(f"- seed {seed}: not assessed ({v['reason']}).")
                continue
            what = ("rises then falls" if v["observed"] else "does not rise then fall by more "
                    "than 0.05")
            lines.append(f"- seed {seed}: the gold score (running mean of 5) {what}: "
                         f"{v['start']:.3f} at the start, {v['peak']:.3f} at KL "
                         f"{v['kl_at_peak']:.1f}, {v['end']:.3f} at KL {v['kl_at_end']:.1f}.")
    else:
        lines.append("PPO with β = 0 was not part of this study.")
    path = root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (root / "results.json").write_text(json.dumps({"rows": rows, "runs": results,
                                                   "overoptimisation": verdicts}, indent=1))
    return path


def compare_methods(cfg: CompareConfig) -> Path:
    """Run the study into `cfg.run_dir` (a rerun reuses every finished base run and method) and
    write report.md, results.json and plots/; return the report's path."""
    root = Path(cfg.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    # a rerun reuses finished runs: only of the same study (more seeds or methods are fine)
    study = {k: v for k, v in dataclasses.asdict(cfg).items()
             if k not in ("seeds", "methods", "workers")}
    check_run_config(root / "config.json", study)
    record_run_config(root / "config.json", study)
    start, results, peaks = time.perf_counter(), [], {}
    with ThreadPoolExecutor(cfg.workers) as pool:  # each thread waits on its process
        list(pool.map(lambda seed: _child(cfg, seed, "base", root / f"seed{seed}" / "base.json"),
                      cfg.seed_list))
        jobs = [(seed, method) for seed in cfg.seed_list for method in cfg.method_list]
        outs = pool.map(lambda job: _child(cfg, job[0], job[1],
                                           root / f"seed{job[0]}" / f"{job[1]}.json"), jobs)
        for (seed, method), out in zip(jobs, outs):
            results += out["results"]
            peaks[(method, seed)] = out["peak_rss_mib"]
    path = write_comparison_report(cfg, results, peaks, time.perf_counter() - start)
    print(f"report: {path}", flush=True)
    return path

