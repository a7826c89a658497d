"""The method comparison's report: gold score against KL for every setting (Gao et al. 2022,
fig. 1; Rafailov et al. 2023, fig. 2), gains, KL, time and memory, the alignment metrics (win
rate against the starting policy, profanity rate, distinct-1/2, length), and one setting's gold
score over training, tested for the rise and fall of over-optimisation
(`eval.trends.rise_and_fall`, confirmed by the final evaluation with `eval.trends.below_peak`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlhf_jax import eval as rl_eval
from rlhf_jax.eval.report import KL_NOTE, METHOD_NAMES, line_text, number, p_text, table_text
from rlhf_jax.eval.trends import below_peak, rise_and_fall
from rlhf_jax.studies.common import mean_se
from rlhf_jax.studies.compare_setup import (COMPARED, ITERATIVE, OVEROPTIMISATION,
                                            QUICK_ITERATIVE, QUICK_OVEROPTIMISATION,
                                            TEXT_METRICS, CompareConfig, base_config)

# one colour and one marker per method, the same in every study (tab10, then darker and
# lighter hues of tab20b/tab20c for the methods after the tenth, and for methods of your own)
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#e7ba52", "#637939", "#843c39",
           "#7b4173", "#3182bd", "#31a354", "#756bb1", "#636363", "#e6550d")
MARKERS = "osD^v<>pP*XhHd8+x123"


def _pooled(stats: list[dict]) -> tuple[float, float]:
    """Mean ± s.e. of one metric over seeds (each {"mean", "stderr"}): the standard error
    between the seeds' means, or with one seed that evaluation's own standard error."""
    if len(stats) == 1:
        return stats[0]["mean"], stats[0]["stderr"]
    return mean_se([s["mean"] for s in stats])


def _gain(after: list[dict], before: list[dict]) -> tuple[float, float]:
    """Mean ± s.e. of after − before over seeds: the standard error between the seeds' gains,
    or with one seed √(se_after² + se_before²) (the two evaluations share their random
    numbers, which makes this an upper bound)."""
    if len(after) == 1:
        return (after[0]["mean"] - before[0]["mean"],
                float(np.hypot(after[0]["stderr"], before[0]["stderr"])))
    return mean_se([a["mean"] - b["mean"] for a, b in zip(after, before)])


def method_styles(methods) -> dict:
    """{method: (colour, marker)}: each method of `compare_setup.COMPARED` keeps its own pair
    in every plot; other names take the next free ones, cycling only past 20 methods."""
    out, free = {}, len(COMPARED)
    for m in methods:
        i = COMPARED.index(m) if m in COMPARED else free
        free += m not in COMPARED
        out[m] = (COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)])
    return out


def signed_sqrt(x):
    """sign(x) · √|x|: the √KL axis of Gao et al. 2022 without dropping a KL estimate that came
    out negative (k1 near the reference)."""
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.sqrt(np.abs(x))


def _cell(v, digits: int = 3, signed: bool = False) -> str:
    """A (mean, s.e.) pair as a table cell (`eval.report.number`); — for none."""
    return "—" if v is None else f"{number(v[0], digits, signed)} ± {number(v[1], digits)}"


def _metrics_table(rows: list[dict], start: dict) -> list[str]:
    """The alignment-metrics table: win rate against the start and the text metrics, for the
    starting policy and every setting (— where a result predates a metric)."""
    cell = _cell
    lines = ["| method | setting | win rate vs start (gold) | profanity rate | distinct-1 | "
             "distinct-2 | length (tokens) |", "|---|---|---|---|---|---|---|",
             "| starting policy (SFT) | — | — | " + " | ".join(
                 cell(start.get(q), 1 if q == "length" else 3) for q in TEXT_METRICS) + " |"]
    for r in rows:
        lines.append(f"| {table_text(METHOD_NAMES.get(r['method'], r['method']))} | "
                     f"{table_text(_setting(r))} | "
                     + " | ".join(cell(r.get(q), 1 if q == "length" else 3)
                                  for q in ("win_rate",) + TEXT_METRICS) + " |")
    return lines


def _setting(r: dict) -> str:
    return f"{r['key'].split('.')[-1]} = {r['value']}"


def overoptimisation_verdict(trajectory: list[dict], after_gold: dict = None) -> dict:
    """Whether the followed setting's gold score rose and then fell over its iterations
    (`eval.trends.rise_and_fall` on the per-iteration gold score, with KL), and whether the
    final evaluation's gold score `after_gold` ({"mean", "stderr"}) confirms that it ended
    below the peak (`eval.trends.below_peak`, under "evaluation")."""
    trend = rise_and_fall([t["gold"] for t in trajectory], kl=[t["kl"] for t in trajectory],
                          steps=[t["step"] for t in trajectory])
    if after_gold is not None and "peak_test" in trend:
        trend["evaluation"] = below_peak(trend, after_gold)
    return trend


def _plots(rows: list[dict], before: dict, trajectories: dict, gold: str, out_dir: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.errorbar([0.0], [before["gold"][0]], yerr=[before["gold"][1]], fmt="k*", ms=12,
                label="starting policy (SFT)")
    styles = method_styles(dict.fromkeys(r["method"] for r in rows))
    for method, (colour, marker) in styles.items():
        pts = [r for r in rows if r["method"] == method]
        x = signed_sqrt([r["kl"][0] for r in pts])
        ax.errorbar(x, [r["gold"][0] for r in pts], yerr=[r["gold"][1] for r in pts],
                    fmt=f"{marker}-", color=colour, ms=6, capsize=2, lw=1,
                    label=METHOD_NAMES.get(method, method))
    ax.set(xlabel="sign · √|KL(π ‖ π_SFT)|, √nats per response (k1; best-of-n: analytic)",
           ylabel=f"gold score ({gold})",
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
            ax.plot(signed_sqrt(kl), g, "o", ms=2, alpha=0.35, color=f"C{seed}")
            if len(g) >= 5:
                k5, g5 = (np.convolve(x, np.ones(5) / 5, "valid") for x in (kl, g))
                ax.plot(signed_sqrt(k5), g5, lw=2, color=f"C{seed}",
                        label=f"seed {seed}, running mean of 5")
        ax.set(xlabel="sign · √|KL| per response over PPO iterations (β = 0; the training's "
                      "k1 estimate)",
               ylabel=f"gold score ({gold})", title="Over-optimisation: PPO without a KL leash")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "overoptimisation.png", dpi=110)
        plt.close(fig)


def _verdict_line(seed, v: dict) -> str:
    """One seed's over-optimisation verdict as a list item."""
    if "reason" in v:
        return f"- seed {seed}: not assessed ({v['reason']})."
    what = ("rises then falls" if v["observed"] else "does not rise then fall significantly")
    line = (f"- seed {seed}: the gold score {what} ({p_text(v['p_rise'])} for the rise, "
            f"{p_text(v['p_fall'])} for the fall): running mean {number(v['start'])} at the start, "
            f"{number(v['peak'])} near iteration {v['peak_step']} (KL "
            f"{number(v['kl_at_peak'], 1)}), {number(v['end'])} at iteration {v['end_step']} "
            f"(KL {number(v['kl_at_end'], 1)}).")
    ev = v.get("evaluation")
    if ev and v["observed"]:
        line += (f" The final evaluation gives {number(ev['after'])} ± "
                 f"{number(ev['after_stderr'])}, " + ("below" if ev["confirmed"] else
                                                      "not significantly below") +
                 f" the peak's {number(ev['peak'])} ({p_text(ev['p'])}).")
    return line


def write_comparison_report(cfg: CompareConfig, results: list[dict], peaks: dict,
                            seconds: float) -> Path:
    """The Markdown report (and plots) of the study's `results` (`run_method` entries)."""
    root = Path(cfg.run_dir)
    rows, before = [], {}
    for (method, value) in dict.fromkeys((r["method"], r["value"]) for r in results):
        per_seed = [r for r in results if r["method"] == method and r["value"] == value]
        gain = lambda q: _gain([r[f"after_{q}"] for r in per_seed],  # noqa: E731
                               [r[f"before_{q}"] for r in per_seed])
        rows.append({"method": method, "key": per_seed[0]["key"], "value": value,
                     "gold": _pooled([r["after_gold"] for r in per_seed]),
                     "gold_gain": gain("gold"), "proxy_gain": gain("proxy"),
                     "kl": _pooled([r["after_kl"] for r in per_seed]),
                     **({"kl_k3": _pooled([r["after_kl_k3"] for r in per_seed])}
                        if all("after_kl_k3" in r for r in per_seed) else {}),
                     "seconds": float(np.mean([r["train_seconds"] for r in per_seed])),
                     "eval_seconds": float(np.mean([r.get("eval_seconds", float("nan"))
                                                    for r in per_seed])),
                     "peak": max(peaks[(method, r["seed"])] for r in per_seed),
                     **{q: float(np.mean([r.get(q, np.nan) for r in per_seed]))
                        for q in ("samples", "judge_calls")},
                     "seeds": len(per_seed)})
        for q in ("win_rate",) + TEXT_METRICS:  # results of an earlier version may lack them
            if all(f"after_{q}" in r for r in per_seed):
                rows[-1][q] = _pooled([r[f"after_{q}"] for r in per_seed])
    first = [r for r in results
             if (r["method"], r["value"]) == (results[0]["method"], results[0]["value"])]
    before["gold"] = _pooled([r["before_gold"] for r in first])
    start = {q: _pooled([r[f"before_{q}"] for r in first]) for q in TEXT_METRICS
             if all(f"before_{q}" in r for r in first)}
    trajectories = {r["seed"]: r["trajectory"] for r in results if r.get("trajectory")}
    base = base_config(cfg, cfg.seed_list[0])
    _plots(rows, before, trajectories, cfg.gold, root / "plots")
    followed = {r["seed"]: r for r in results if r.get("trajectory")}
    verdicts = {seed: overoptimisation_verdict(t, followed[seed].get("after_gold"))
                for seed, t in trajectories.items()}
    lines = [
        "# Method comparison", "",
        f"Built-in task, seeds {cfg.seeds}"
        + (" (quick: one setting per method, tiny budgets)" if cfg.quick else "") + ". "
        f"For each seed one SFT policy, one set of comparisons by simulated annotators judging "
        f"by `{cfg.annotator_judge}`, and one reward model trained on them are shared by every "
        f"method; the gold judge is `{cfg.gold}`. " + (
            f"Every number is a mean over the {len(cfg.seed_list)} seeds ± the standard error "
            "between seeds; each seed's value is itself a mean over the evaluation prompts. "
            if len(cfg.seed_list) > 1 else
            "With one seed, every ± is the evaluation's own standard error over its prompts "
            "(a gain's: √(se_after² + se_before²)). ") + "Study time "
        f"{seconds / 60:.1f} min" + (f" with {cfg.workers} runs at once (their times include "
                                     "competing for the cores)" if cfg.workers > 1 else "") +
        ".", "",
        "![gold vs KL](plots/frontier.png)", "",
        "| method | setting | gold after | gold gain | proxy gain | KL k1 (nats) | KL k3 "
        "(nats) | samples | judge calls | train s | eval s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {table_text(METHOD_NAMES.get(r['method'], r['method']))} | "
            f"{table_text(_setting(r))} | {_cell(r['gold'])} | "
            f"{_cell(r['gold_gain'], signed=True)} | {_cell(r['proxy_gain'], signed=True)} | "
            f"{_cell(r['kl'], 2)} | {_cell(r.get('kl_k3'), 2)} | {number(r['samples'], 0)} | "
            f"{number(r['judge_calls'], 0)} | {number(r['seconds'], 1)} | "
            f"{number(r['eval_seconds'], 1)} | {number(r['peak'], 0)} |")
    it = {**ITERATIVE, **(QUICK_ITERATIVE if cfg.quick else {})}
    quick_ppo = (f" (PPO at β = {OVEROPTIMISATION[1]}: {QUICK_OVEROPTIMISATION['ppo.steps']}, "
                 "to follow its over-optimisation)" if cfg.quick else "")
    lines += ["", f"Starting policy's gold score: {_cell(before['gold'])}. Budgets: PPO, RLOO "
              f"and GRPO {base.ppo.steps} iterations{quick_ppo} of {base.ppo.batch_size} "
              f"sampled responses; the offline methods {base.offline.steps} steps of "
              f"{base.offline.batch_size} rows; online DPO {base.online.steps} steps of "
              f"{base.online.batch_size} prompts × {base.online.samples_per_prompt} samples "
              f"ranked by the reward model; iterative DPO {it['rounds']} rounds of "
              f"{it['prompts_per_round']} prompts × {ITERATIVE['samples_per_prompt']} samples "
              "ranked by the reward model (best against worst), each round "
              f"{it['offline.steps']} DPO steps of {ITERATIVE['offline.batch_size']} rows from "
              "the last round's policy against the starting one; best-of-n no training. "
              f"Every method has the seed's {base.comparisons} simulated comparisons behind it "
              "(the offline methods learn from them, the others from the reward model trained "
              "on them). Samples are the responses a method drew from its policy and judge "
              "calls the responses the reward model scored, in training (for best-of-n at "
              "evaluation: n per prompt). " + KL_NOTE + " "
              "Best-of-n's KL (the k1 column; k3 —) is the analytic log n − (n − 1)/n, exact "
              "for distinct samples and an upper bound when samples repeat (Beirami et al. "
              "2024). Train seconds include compilation (shared through the "
              "compilation cache, so the first setting of a shape pays it); eval seconds are "
              "the before and after evaluation (for best-of-n, its n samples per prompt); peak "
              "RSS is the resident memory of the process that ran the method's sweep (host "
              "memory: JAX runs on the CPU here" + ("; in a quick study several methods share "
              "a process, and its peak so far is shown" if cfg.quick else "") + "). A method "
              "rerun after a crash resumes its finished settings, whose times then are not "
              "their training's.",
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
        lines += [_verdict_line(seed, v) for seed, v in verdicts.items()]
        lines += ["", f"Test: {verdicts[next(iter(verdicts))]['test']}. The final evaluation "
                  "confirms the fall when its gold score is below the peak by a one-sided "
                  "z-test (p < 0.05; the peak measured on the iterations that did not locate "
                  "it)."]
    else:
        lines.append("PPO with β = 0 was not part of this study.")
    path = root / "report.md"
    lines = [line if line.startswith("|") else line_text(line) for line in lines]
    path.write_text("\n".join(lines) + "\n")
    (root / "results.json").write_text(json.dumps({"rows": rows, "runs": results,
                                                   "overoptimisation": verdicts}, indent=1))
    return path
