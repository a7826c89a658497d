"""The robustness study's report: tables of accuracy, attack success and detection per attack,
rate and defence (mean ± s.e. over seeds), plots, the exploit before and after patching, and
the summary line."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rlhf_jax.studies.common import mean_se, write_report
from rlhf_jax.studies.configs.robustness import RobustnessConfig

SUCCESS = {"trigger": ("trigger_asr", "the model prefers the gold-worse response on prompts "
                       "carrying the trigger"),
           "entity": ("entity_rate", "best-of-n picks a response mentioning the entity"),
           "targeted_flip": ("topic_accuracy", "gold accuracy on the attacked topic: lower is "
                             "the attack working")}


def _values(results, kind, rate, defence, metric) -> list:
    """The metric over seeds (rate 0: the clean run, whichever attack it is filed under)."""
    out = []
    for key, cell in results["cells"].items():
        k, r, _ = key.split("/")
        if float(r) == rate and (k == kind or rate == 0) and defence in cell:
            v = cell[defence].get(metric)
            if v is not None and np.isfinite(v):
                out.append(float(v))
    return out


def _fmt(values, digits=3) -> str:
    if not values:
        return "–"
    m, se = mean_se(values)
    return f"{m:.{digits}f} ± {se:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def _pooled_honest(results) -> float:
    """Honest annotators flagged by the screening / honest annotators screened, over every
    attack, rate (the clean run included) and seed."""
    cells = [c["screening"] for c in results["cells"].values() if "screening" in c]
    screened = sum(c.get("honest", 0) for c in cells)
    return sum(c.get("honest_flagged", 0) for c in cells) / screened if screened else float("nan")


def _worst_honest(results) -> tuple:
    """The cell with the largest share of honest annotators flagged: (rate, key)."""
    worst = max(((c["screening"].get("honest_flag_rate", 0.0), k)
                 for k, c in results["cells"].items() if "screening" in c), default=(0.0, ""))
    return worst


def _mean(values) -> float:
    return float(np.mean(values)) if values else float("nan")


def _plot(path: Path, results, attacks, rates, defences) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(attacks), figsize=(4 * len(attacks), 3.4), squeeze=False)
    for ax, kind in zip(axes[0], attacks):
        for d in defences:
            ys = [_values(results, kind, r, d, "accuracy") for r in rates]
            keep = [i for i, y in enumerate(ys) if y]
            m = [mean_se(ys[i])[0] for i in keep]
            se = [mean_se(ys[i])[1] for i in keep]
            ax.errorbar([rates[i] for i in keep], m, yerr=se, marker="o", capsize=2, label=d)
        ax.set_title(kind)
        ax.set_xlabel("poisoning rate")
        ax.set_ylabel("held-out gold accuracy")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_robustness_report(root: Path, cfg: RobustnessConfig, attacks, rates,
                            results: dict) -> Path:
    """Write report.md, results.json and plots/accuracy.png; print the summary line."""
    defences = [d.strip() for d in cfg.defences.split(",") if d.strip()]
    _plot(root / "plots" / "accuracy.png", results, attacks, rates, defences)
    lines = ["# Poisoned feedback: attacks, defences and a patched exploit", "",
             f"Built-in task, {cfg.train_pairs} training comparisons labelled by "
             f"{cfg.honest_annotators} honest simulated annotators (Bradley–Terry, temperature "
             f"{cfg.temperature}); attackers take over a share of the labels (`data.poison`). "
             f"Reward models: {cfg.ensemble} bootstrap heads, {cfg.steps} steps. Seeds: "
             f"{cfg.seeds}; mean ± s.e. over seeds. Accuracy is on {cfg.heldout_pairs} clean "
             "held-out comparisons, by the gold judge.", "",
             "![accuracy against the poisoning rate](plots/accuracy.png)", ""]
    for kind in attacks:
        lines += [f"## {kind}", "", "Held-out gold accuracy:", "",
                  "| rate | " + " | ".join(defences) + " |",
                  "|---|" + "---|" * len(defences)]
        for r in rates:
            lines.append(f"| {r:g} | " + " | ".join(
                _fmt(_values(results, kind, r, d, "accuracy")) for d in defences) + " |")
        if kind in SUCCESS:
            metric, what = SUCCESS[kind]
            lines += ["", f"Attack success ({what}):", "",
                      "| rate | " + " | ".join(defences) + " |",
                      "|---|" + "---|" * len(defences)]
            for r in rates:
                lines.append(f"| {r:g} | " + " | ".join(
                    _fmt(_values(results, kind, r, d, metric)) for d in defences) + " |")
        if "screening" in defences:
            lines += ["", "Annotator screening (flagged = quarantined or down-weighted):", "",
                      "| rate | precision | recall | honest flagged |", "|---|---|---|---|"]
            for r in rates:
                lines.append(f"| {r:g} | "
                             + " | ".join(_fmt(_values(results, kind, r, "screening", m), 2)
                                          for m in ("precision", "recall",
                                                    "honest_flag_rate")) + " |")
        lines.append("")
    ex = list(results["exploit"].values())
    if ex:
        lines += ["## The reward exploit, before and after patching", "",
                  "The hacking diagnostics' best appended word on the clean model, appended "
                  "twice; gain in units of the reward's s.d. over the responses. Patching adds "
                  f"{cfg.patch_negatives} labelled negatives over the words that gain (the "
                  "response preferred to its edited copy) and retrains for "
                  "as many passes over the original labels; the last column is the word that "
                  "gains most after patching.", "",
                  "| seed | word | gain before | gold change | gain after | accuracy before "
                  "| accuracy after | best word after (gain) |", "|---" * 8 + "|"]
        for seed, e in results["exploit"].items():
            lines.append(f"| {seed} | {e['word']} | {e['gain_before']:.2f} | "
                         f"{e['gold_change']:.2f} | {e['gain_after']:.2f} | "
                         f"{e['accuracy_before']:.3f} | {e['accuracy_after']:.3f} | "
                         f"{e['best_word_after']} ({e['best_gain_after']:.2f}) |")
        lines.append("")
    summary = {
        "clean_acc": _mean(_values(results, attacks[0], 0.0, "none", "accuracy")),
        "flip20_acc": _mean(_values(results, "inverter", 0.2, "none", "accuracy")),
        "flip20_defended_acc": _mean(_values(results, "inverter", 0.2, "screening",
                                             "accuracy")),
        "trigger5_asr": _mean(_values(results, "trigger", 0.05, "none", "trigger_asr")),
        "trigger5_defended_asr": _mean(_values(results, "trigger", 0.05, "trigger_scan",
                                               "trigger_asr")),
        "honest_flag_rate": _pooled_honest(results),
        "exploit_gain_before": _mean([e["gain_before"] for e in ex]),
        "exploit_gain_after": _mean([e["gain_after"] for e in ex])}
    results["summary"] = summary
    worst = _worst_honest(results)
    lines += ["## Summary", "", *(f"- {k}: {v:.3f}" for k, v in summary.items()), "",
              "clean_acc: no attack, no defence; flip20: inverters give 20 % of the labels "
              "(none / annotator screening); trigger5: the backdoor at 5 % (none / trigger "
              "scan), its success on held-out prompts carrying the trigger; honest_flag_rate: "
              "honest annotators flagged over all honest annotators screened, every attack, "
              f"rate and seed (the worst single run: "
              f"{f'{worst[0]:.3f}, {worst[1]}' if worst[0] > 0 else 'none flagged'}); "
              "exploit gains in units of the reward's s.d., means over seeds.", "",
              f"Study time: {results['seconds']:.0f} s."]
    report = write_report(root, lines, results)
    print("robustness: " + " ".join(f"{k}={v:.3f}" for k, v in summary.items()), flush=True)
    return report
