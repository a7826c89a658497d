"""The run report: a Markdown page with matplotlib plots of a finished RLHF run.

The caller (`stages.pipeline`) reads the run's files and passes their contents: the reward
model's metric rows and held-out summary, the PPO metric rows, the before/after evaluation and the
run's settings and stage times; every number in the report comes from them.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rlhf_jax.eval.metrics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from rlhf_jax.eval.trends import below_peak, rise_and_fall


def _series(rows: list[dict], *keys: str) -> list[list[float]]:
    """Columns of the rows that have every key (in step order)."""
    rows = sorted((r for r in rows if all(k in r for k in keys)), key=lambda r: r["step"])
    return [[r[k] for r in rows] for k in keys]


def data_limits(values, lo: float, hi: float, pad: float = 0.03) -> tuple[float, float]:
    """Axis limits that show [lo, hi] and every finite value, with `pad` of the span around
    the values: a plot never cuts its data off."""
    v = np.asarray([x for x in np.ravel(np.asarray(values, np.float64)) if np.isfinite(x)])
    low, high = min([lo, *v]), max([hi, *v])
    margin = pad * (high - low or 1.0)
    return low - margin, high + margin


def _plot_reward(rows: list[dict], out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    step, acc = _series(rows, "step", "reward/accuracy")
    ax.plot(step, acc, alpha=0.4, label="training batches")
    step, held = _series(rows, "step", "eval/accuracy")
    ax.plot(step, held, "o-", label="held-out comparisons")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance")
    ax.set(xlabel="reward-model step", ylabel="accuracy", ylim=data_limits(acc + held, 0.3, 1.0),
           title="Reward model: agreement with the annotators")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _plot_overoptimisation(rows: list[dict], gold_key: str, out: Path) -> None:
    """Proxy and gold score against KL over PPO iterations (Gao et al. 2022, fig. 1), in two
    panels that share the KL axis: each score on its own scale, the points joined in iteration
    order, with a running mean over 5 iterations to read the trend through the noise."""
    import matplotlib.pyplot as plt

    step, kl, proxy, gold = _series(rows, "step", "kl/sequence", "score/reward_model", gold_key)
    smooth = lambda x: np.convolve(x, np.ones(5) / 5, mode="valid")  # noqa: E731
    fig, axes = plt.subplots(2, 1, figsize=(6, 5.5), sharex=True)
    judge = gold_key.split("/")[-1]
    for ax, values, color, name in ((axes[0], proxy, "C0", "proxy: reward model (normalised)"),
                                    (axes[1], gold, "C1", f"gold: {judge}")):
        ax.plot(kl, values, "o-", ms=3, lw=0.6, alpha=0.45, color=color,
                label=f"{name}, each iteration in order")
        if len(kl) >= 5:
            ax.plot(smooth(kl), smooth(values), color=color, lw=2,
                    label=f"{name}, running mean of 5")
        ax.set_ylabel(name.split(":")[0] + " score")
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_title("PPO: proxy and gold score against KL")
    axes[1].set_xlabel("KL(π ‖ π_ref) per response, nats (per-iteration estimate)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _plot_offline(rows: list[dict], method: str, out: Path) -> None:
    """An offline method's objective and its implicit-reward accuracy over training steps."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    step, loss = _series(rows, "step", "train/loss")
    axes[0].plot(step, loss, alpha=0.6, label="training batches")
    step, loss = _series(rows, "step", "eval/loss")
    axes[0].plot(step, loss, "o-", label="held-out comparisons")
    axes[0].set(ylabel="loss", title=f"{method}: objective and implicit-reward accuracy")
    axes[0].legend(loc="upper right", fontsize=8)
    drawn = False
    for key, style, name in (("rewards/accuracy", "-", "training batches"),
                             ("eval/rewards/accuracy", "o-", "held-out comparisons")):
        step, acc = _series(rows, "step", key)
        if step:
            axes[1].plot(step, acc, style, label=name)
            drawn = True
    if drawn:
        axes[1].axhline(0.5, color="grey", lw=0.8, ls=":")
        axes[1].legend(loc="lower right", fontsize=8)
    else:  # KTO, AWR, filtered BC: no pairs to order
        axes[1].text(0.5, 0.5, "no implicit-reward accuracy: the method reads no pairs",
                     ha="center", va="center", transform=axes[1].transAxes)
    axes[1].set(xlabel="step", ylabel="implicit-reward accuracy")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# how the report names each method's trained policy
METHOD_NAMES = {"ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO", "best_of_n": "best-of-n",
                "dpo": "DPO", "cdpo": "cDPO", "rdpo": "robust DPO", "ipo": "IPO",
                "simpo": "SimPO", "orpo": "ORPO", "kto": "KTO", "awr": "AWR",
                "filtered_bc": "filtered BC", "online_dpo": "online DPO",
                "iterative_dpo": "iterative DPO"}


def rel_of(plots: Path, report_path: Path) -> str:
    """The plots directory relative to the report (for Markdown image links)."""
    return Path(os.path.relpath(plots, report_path.parent)).as_posix()


def number(x, digits: int = 3, signed: bool = False) -> str:
    """`x` with `digits` decimals, never "-0.000": a value that rounds to zero prints without a
    sign (or with + when `signed`); None or NaN prints as —."""
    if x is None or not np.isfinite(x):
        return "—"
    text = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    if float(text) == 0:
        text = f"{0.0:+.{digits}f}" if signed else f"{0.0:.{digits}f}"
    return text


def p_text(p: float) -> str:
    """A p-value for a sentence: "p = 0.0012", or "p < 1e-16" below what double precision
    resolves next to 1 (a tail probability that small prints as 0)."""
    return "p = —" if p is None or not np.isfinite(p) else (
        "p < 1e-16" if p < 1e-16 else f"p = {p:.2g}")


def mean_se_text(s: dict, digits: int = 3, signed: bool = False) -> str:
    """A {"mean", "stderr"} summary as "mean ± s.e." (`number`); — where there is none."""
    if s is None:
        return "—"
    return f"{number(s['mean'], digits, signed)} ± {number(s['stderr'], digits)}"


def _fmt(s: dict, digits: int = 3) -> str:
    return mean_se_text(s, digits)


def _metric(key: str, digits: int = 3):
    """A table cell: the summary's `key` as mean ± s.e., or — where the summary has none (the
    reference's win rate against itself; an evaluation written before the metric existed)."""
    return lambda x: _fmt(x[key], digits) if key in x else "—"


def _table(columns: list, rows: list) -> list[str]:
    """Markdown table lines: `columns` (name, cell function), `rows` (label, summary)."""
    return (["| policy | " + " | ".join(name for name, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"] +
            [f"| {table_text(label)} | " + " | ".join(f(x) for _, f in columns) + " |"
             for label, x in rows])


# how the reports' KL columns are estimated
KL_NOTE = (
    "KL: nats per response, estimated from the same samples in two ways (Schulman 2020, "
    "\"Approximating KL divergence\"): k1 = Σ_t log π(y_t) − log π_ref(y_t), which can come "
    "out negative near the reference, and k3 = Σ_t (r_t − 1 − log r_t) with r_t = π_ref(y_t) / "
    "π(y_t), which never does; both are unbiased. k3 varies less near the reference; far from "
    "it its rare large terms make a sample's mean read low, so k1 is the one to read at large "
    "KL. A k1 within a standard error or two of 0 says the policy has barely moved.")
# what each metric of the report's policy tables is (its footnote)
METRIC_NOTES = (
    "Win rate vs reference: the share of prompts where the policy's response gets a higher "
    "gold score than the reference policy's response to the same prompt, ties counting half"
    " (— for the reference itself, which ties every prompt). Profanity rate: the share of "
    "responses alt-profanity-check's packaged classifier flags (P > 0.5). Distinct-n: "
    "distinct n-grams over all responses / their total words, split at whitespace (Li et "
    f"al. 2016); its standard error is a bootstrap over responses ({BOOTSTRAP_RESAMPLES} "
    f"resamples, seed {BOOTSTRAP_SEED}). "
    "Length: response tokens. " + KL_NOTE + " Every other ± is the standard error over the "
    "samples, std / √n.")


# characters that end a line: each becomes <br> in a table cell, a space in a line of text
_LINE_BREAKS = ("\r\n", "\r", "\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028",
                "\u2029")


def _clean(text: str, newline: str) -> str:
    """`text` with every line break as `newline`, tabs as spaces, other control characters
    (C0, DEL, C1) dropped and lone surrogates (which cannot be written as UTF-8) as U+FFFD."""
    text = str(text)
    for brk in _LINE_BREAKS:
        text = text.replace(brk, "\n")
    text = text.replace("\t", " ")
    text = "".join("\ufffd" if 0xD800 <= ord(c) < 0xE000 else c for c in text
                   if not (ord(c) < 32 and c != "\n" or 127 <= ord(c) < 160))
    return text.replace("\n", newline)


def line_text(text) -> str:
    """Text for one line of a Markdown page (a heading, a list item, a sentence): line breaks
    as spaces, control characters dropped (`_clean`)."""
    return _clean(text, " ")


def table_text(text) -> str:
    """Text for a Markdown table cell: backslashes and pipes escaped, line breaks as <br>,
    other control characters dropped, HTML's < and & escaped (the cell stays one valid row of
    text)."""
    text = _clean(text, "\n").replace("&", "&amp;").replace("<", "&lt;")
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\n", "<br>")


def prompt_cell(prompt) -> str:
    """A prompt for a table cell: its text, or a conversation turn by turn with each role in
    bold."""
    if isinstance(prompt, str):
        return table_text(prompt)
    return "<br>".join(f"**{table_text(m['role'])}:** {table_text(m['content'])}"
                       for m in prompt)


def _rise_and_fall_headline(rows: list[dict], gold_key: str, after: dict, name: str) -> str:
    """The headline's sentence on the gold score over the policy's iterations, when it rose and
    then fell (`eval.trends.rise_and_fall`; the final evaluation `after` checked against the
    peak by `eval.trends.below_peak`); empty otherwise."""
    step, kl, gold = _series(rows, "step", "kl/sequence", gold_key)
    trend = rise_and_fall(gold, kl=kl, steps=step)
    if not trend["observed"]:
        return ""
    check = below_peak(trend, after)
    return (f" **Over-optimisation: the gold score rose and then fell during {name}.** Its "
            f"running mean peaked at {number(trend['peak'])} near iteration "
            f"{trend['peak_step']} (KL {number(trend['kl_at_peak'], 2)} nats) and ended at "
            f"{number(trend['end'])} at iteration {trend['end_step']} (KL "
            f"{number(trend['kl_at_end'], 2)}); the final policy scores "
            f"{mean_se_text(after)} in the evaluation"
            + (f", below the peak (one-sided z-test, {p_text(check['p'])})."
               if check["confirmed"] else
               ", which does not confirm the fall (one-sided z-test against the peak, "
               f"{p_text(check['p'])}).")
            + f" Test: {trend['test']}; {p_text(trend['p_rise'])} for the rise, "
            f"{p_text(trend['p_fall'])} for the fall, α = {trend['alpha']}.")


def write_report(report_path, plots_dir, *, info: dict, reward_rows: list[dict],
                 reward_summary: dict, policy_rows: list[dict], evaluation: dict,
                 gold_key: str = "reward_terms/vader") -> Path:
    """Write the Markdown report to `report_path` and its plots into `plots_dir`; return the path.

    `info` holds the run's settings (run_dir, seed, stage_seconds, gold, annotator_temperatures,
    method — ppo by default — and best_of_n, before_label — what the policy before training is
    —, data — one line per prepared dataset — and either preference_file or comparisons /
    gold_label_agreement); `policy_rows` are the policy stage's metric rows (none for
    best-of-n); `evaluation` is {"before", "after"}, each an `evaluate_policy` result, the
    "after" summary with the `win_rate` against "before" (`eval.metrics.win_rate`). The
    policy tables show every alignment metric as mean ± standard error; a metric a summary
    lacks shows as —.
    """
    import matplotlib

    matplotlib.use("Agg")
    report_path, plots = Path(report_path), Path(plots_dir)
    plots.mkdir(parents=True, exist_ok=True)
    _plot_reward(reward_rows, plots / "reward_accuracy.png")
    method = info.get("method", "ppo")
    name = METHOD_NAMES.get(method, method)
    if info.get("custom_loss"):  # a loss of the user's own in place of the method's
        name = f"{name} with the loss `{info['custom_loss']}`"
    if method in ("ppo", "rloo", "grpo"):
        _plot_overoptimisation(policy_rows, gold_key, plots / "gold_proxy_vs_kl.png")
        figure = [f"![gold and proxy vs KL]({rel_of(plots, report_path)}/gold_proxy_vs_kl.png)",
                  "", "Where the proxy keeps rising while the gold score flattens or falls, the "
                  "policy is exploiting the reward model rather than pleasing the judge (Gao et "
                  "al. 2022).", ""]
    elif method == "best_of_n":
        figure = [f"Best-of-{info.get('best_of_n')}: no training; each response is the one the "
                  "reward model prefers among that many samples of the starting policy; its KL "
                  "is the analytic log n − (n − 1)/n, exact for distinct samples and an upper "
                  "bound when they repeat.", ""]
        limited = evaluation["after"]["summary"]
        if "limit" in limited:  # constrained best-of-n (eval.evaluate_best_of_n)
            figure[0] += (f" Only candidates whose {info.get('constraint_cost', 'cost')} is at "
                          f"most {limited['limit']:g} compete; "
                          f"{limited['over_limit']:.0%} of prompts had none and keep their "
                          f"least costly sample (mean cost chosen "
                          f"{limited['cost']['mean']:.3f} ± {limited['cost']['stderr']:.3f}).")
    else:
        _plot_offline(policy_rows, name, plots / "training.png")
        how = (f"{name} learns from the comparisons directly; the reward model only judges "
               "the result.")
        if method == "online_dpo":  # Guo et al. 2024: its own samples, judged as it goes
            judge = info.get("online_judge", "reward_model")
            how = (f"{name[:1].upper()}{name[1:]} learns from pairs of its own samples, "
                   "ranked at every step by "
                   + ("the reward model" if judge == "reward_model" else f"the `{judge}` judge")
                   + f" (loss: {METHOD_NAMES.get(info.get('online_loss'), 'DPO')}, against the "
                   "starting policy); the comparisons only trained the reward model. The "
                   "implicit-reward accuracy is measured on each step's fresh samples.")
        figure = [f"![training]({rel_of(plots, report_path)}/training.png)", "", how, ""]
    rel = rel_of(plots, report_path)
    ev, run = evaluation, info.get("run_dir", report_path.parent)
    before, after = ev["before"]["summary"], ev["after"]["summary"]
    annot = {k.rsplit("/", 1)[-1]: v for k, v in reward_summary.items()
             if k.startswith("eval/accuracy_annotator/")}
    before_label = info.get("before_label", "before (SFT)")
    pairs = int(reward_summary["eval/pairs"])
    scores = [("gold", _metric("gold")), ("proxy (reward model)", _metric("proxy")),
              ("KL, k1", _metric("kl")), ("KL, k3 (≥ 0)", _metric("kl_k3")),
              ("win rate vs reference (gold)", _metric("win_rate"))]
    text_metrics = [("profanity rate", _metric("profanity_rate")),
                    ("distinct-1", _metric("distinct_1")), ("distinct-2", _metric("distinct_2")),
                    ("length", _metric("length", 1))]
    eos = ("ends with EOS", lambda x: f"{x['eos_fraction']:.2f}")
    if eos[1](before) != eos[1](after):  # the same fraction before and after says nothing
        text_metrics.append(eos)
    policies = [(before_label, before), (f"after {name}", after)]
    reward_text = (
        (f"Trained on the comparisons in `{info['preference_file']}`. "
         if "preference_file" in info else
         f"Trained on {info['comparisons']} comparisons of SFT samples by simulated annotators "
         + (f"(judging by {info['annotator_judge']}; gold judge: {info['gold']}, "
            if info.get("annotator_judge") else f"(gold judge: {info['gold']}, ") +
         "Bradley–Terry temperatures "
         f"{info['annotator_temperatures']}"
         + (f"; {info['pairs_with_an_empty_response']} pairs with an empty response left out"
            if info.get("pairs_with_an_empty_response") else "") + "). ") +
        f"Held-out accuracy **{reward_summary['eval/accuracy']:.3f}** on {pairs} pairs "
        f"(chance 0.5); loss {reward_summary['eval/loss']:.3f}, ECE "
        f"{reward_summary['eval/ece']:.3f}." +
        (f" Per annotator: {', '.join(f'{k} {v:.3f}' for k, v in sorted(annot.items()))}."
         if annot else "") +
        (f" With only {pairs} held-out pairs, the accuracy's standard error is about "
         f"{0.5 / np.sqrt(max(pairs, 1)):.2f}: read it as a rough figure." if pairs < 50 else "") +
        (f" The gold judge itself sides with {info['gold_label_agreement']:.3f} of all labels "
         "(ties count half): the noisy annotators cap what any reward model can reach."
         if "gold_label_agreement" in info else ""))
    reference = before_label.split("(")[-1].rstrip(")")
    reference += "" if reference.endswith("policy") else " policy"
    gain = after["gold"]["mean"] - before["gold"]["mean"]
    lines = [
        "# RLHF run report", "",
        f"Run directory `{line_text(run)}`, seed {info['seed']}. Stage times (s): " +
        ", ".join(f"{k} {v:.0f}" for k, v in info["stage_seconds"].items()) +
        f"; total {sum(info['stage_seconds'].values()):.0f} s.", "",
        *(["## Warnings", "", "Settings of this run that may defeat it (each stage printed "
           "them too):", "", *(f"- **{table_text(w)}**" for w in info["warnings"]), ""]
          if info.get("warnings") else []),
        *(["## Data", "", *(f"- {line_text(line)}" for line in info["data"]), ""]
          if info.get("data")
          else []),
        "## Reward model", "", reward_text, "",
        f"![reward accuracy]({rel}/reward_accuracy.png)", "",
        f"## Policy before and after {name}", "",
        f"{before['samples']} samples each (mean ± standard error), KL to the reference "
        f"({reference}, where {name} started) in nats per response.", "",
        *_table(scores, policies), "",
        "Safety, diversity and length of the same responses:", "",
        *_table(text_metrics, policies), "",
        METRIC_NOTES, "",
        f"Gold improvement: **{number(gain, 3, signed=True)}** ({number(before['gold']['mean'])} "
        f"→ {number(after['gold']['mean'])})." + (_rise_and_fall_headline(
            policy_rows, gold_key, after["gold"], name) if method in ("ppo", "rloo", "grpo")
            else ""), "",
        *figure,
        "## Samples", ""]
    for title, part in ((before_label, ev["before"]), (f"after {name}", ev["after"])):
        lines += [f"### {line_text(title)}", "", "| prompt | response | gold | proxy |",
                  "|---|---|---|---|"]
        for r in part["rows"][:info.get("report_samples", 8)]:
            lines.append(f"| {prompt_cell(r['prompt'])} | {table_text(r['response']) or '(empty)'}"
                         f" | {number(r['gold'])} | {number(r['proxy'])} |")
        lines.append("")
    report_path.write_text("\n".join(lines))
    return report_path
