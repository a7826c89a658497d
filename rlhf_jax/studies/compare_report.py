"""The method comparison's report: gold score against KL for every setting (Gao et al. 2022,
fig. 1; Rafailov et al. 2023, fig. 2), gains, KL, time and memory, the alignment metrics (win
rate against the starting policy, profanity rate, distinct-1/2, length), and one setting's gold
score over training, tested for the rise and fall of over-optimisation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlhf_jax import eval as rl_eval
from rlhf_jax.eval.report import METHOD_NAMES
from rlhf_jax.studies.common import mean_se
from rlhf_jax.studies.compare_setup import (OVEROPTIMISATION, TEXT_METRICS, CompareConfig,
                                            base_config)


def _pooled(stats: list[dict]) -> tuple[float, float]:
    """Mean ± s.e. of one metric over seeds (each {"mean", "stderr"}): the standard error
    between the seeds' means, or with one seed that evaluation's own standard error."""
    if len(stats) == 1:
        return stats[0]["mean"], stats[0]["stderr"]
    return mean_se([s["mean"] for s in stats])


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
                     "gold": mean_se([r["after_gold"]["mean"] for r in per_seed]),
                     "gold_gain": mean_se(gain("gold")), "proxy_gain": mean_se(gain("proxy")),
                     "kl": mean_se([r["after_kl"]["mean"] for r in per_seed]),
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
    before["gold"] = mean_se([r["before_gold"]["mean"] for r in first])
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
