"""The reward-model audit report as HTML (self-contained: styles and images inline) and Markdown,
rendered from the result dictionary of `studies.audit_reward` (every number comes from it)."""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import numpy as np

from rlhf_jax.eval.report import line_text, number, p_text, table_text

TITLE = "Reward-model audit"


def _f(x, digits: int = 3) -> str:
    return number(x, digits) if isinstance(x, float) else "—" if x is None else str(x)


def _p(x) -> str:
    """A p-value for a table cell: "0.0012", "< 1e-16" or —."""
    return p_text(x).removeprefix("p = ").removeprefix("p ")


def _concept_notes(result: dict) -> tuple[list[str], str]:
    """The concept section's notes on what was left out, and why its table is empty if it is."""
    notes = [f"Left out: concept '{name}': {why}." for name, why in
             result.get("tcav_left_out", {}).items()]
    if result.get("tcav_left_out") and result["tcav_settings"].get("builtin_concepts", True):
        notes.append("The built-in concepts are texts of the built-in task; for another model "
                     "turn them off with --config.builtin_concepts=false, or give concepts that "
                     "fit its lengths with --config.concepts=name=file.jsonl.")
    if result.get("random_sets_left_out"):
        notes.append(f"{result['random_sets_left_out']} random sets were left out: too few of "
                     "their examples fit the model's lengths.")
    return notes, result.get("tcav_reason") or "no concept was tested"


def _sections(result: dict) -> list[tuple[str, list[list[str]], list[str], str]]:
    """(title, table rows (first row = header), notes, why the table is empty) of every
    tabular section, shared by the HTML and the Markdown."""
    card, hack = result["card"], result["hacking"]
    held = card["held_out"]
    model = [["field", "value"],
             ["reward model", card["reward_dir"]],
             ["weights sha256", card["model_sha256"] or "—"],
             ["head sha256", card["head_sha256"]],
             ["ensemble heads", str(card["ensemble_heads"])],
             ["training config sha256", card["training_config_sha256"] or "—"],
             ["training steps", _f(card["training_steps"])],
             ["held-out accuracy", _f(held.get("accuracy"))],
             ["held-out pairs", _f(held.get("pairs"), 0)],
             ["held-out loss", _f(held.get("loss"))],
             ["calibration (ECE)", _f(held.get("ece"))],
             ["gold judge", card["gold"]]]
    if card.get("feedback"):
        model.append(["feedback", card["feedback"]])
    datasets = [["file", "kind", "records", "comparisons", "sha256"]] + [
        [d["file"], d["kind"], str(d["records"]), str(d["comparisons"]), d["sha256"]]
        for d in card["data"]]
    ann = card["annotators"]
    people = [["annotator", "labels", "agreement with gold judge", "reward-model accuracy on "
               "their held-out labels"]] + [
        [n, str(a["labels"]), _f(a["gold_agreement"]),
         _f(card["per_annotator_accuracy"].get(n))] for n, a in ann["annotators"].items()]
    agree_note = (f"{ann['pairs_labelled_twice_or_more']} pairs were labelled by two or more "
                  f"annotators: observed agreement {_f(ann['observed_agreement'])}, "
                  f"Krippendorff's α {_f(ann['krippendorff_alpha'])}."
                  if ann["pairs_labelled_twice_or_more"] else
                  "Every pair was labelled once, so inter-annotator agreement cannot be measured "
                  "here; the agreement with the gold judge stands in for it.")
    ts = result["tcav_settings"]
    left_notes, concept_empty = _concept_notes(result)
    concepts = [["concept", "examples", "TCAV score", "random CAVs' TCAV", "Kim et al. p",
                 "sensitivity", "random sets' sensitivity", "p-value", "significant",
                 "probe accuracy"]] + [
        [c["name"], str(c["examples"]), _f(c["tcav"], 2), _f(sum(c["random_scores"]) / len(c["random_scores"]), 2),
         f"{c['p_kim']:.2g}", _f(c["sensitivity"]),
         f"{np.mean(c['null']):.3f} ± {np.std(c['null'], ddof=1):.3f}",
         f"{c['p_value']:.2g}", "yes" if c["significant"] else "no",
         _f(c["probe_accuracy"], 2)] for c in result["tcav"]]
    concept_note = (f"Layer {ts['layer']}, {ts['pooling']} pooling, {ts['random_sets']} random "
                    "sets. TCAV score: the share of inputs whose reward rises along the concept's "
                    "direction (Kim et al. 2018, eq. 2), averaged over the runs; Kim et al. p: "
                    "their t-test against random-vs-random CAVs. Sensitivity: the mean "
                    "directional derivative of the reward along the concept's CAV (its sign: "
                    "the direction); significant: the sensitivity is outside what random sets "
                    "in the concept's place give (two-sided, p < "
                    f"{ts['alpha']}/{max(len(result['tcav']), 1)}, Bonferroni)." +
                    (" At the reward head's input with last-token pooling, ∂r/∂h is the head's "
                     "weight vector for every input, so each run's TCAV score is 0 or 1."
                     if ts["layer"] == -1 and ts["pooling"] == "last" else ""))
    lb = hack["length"]
    length = [["score", "Spearman ρ with length in tokens (± s.e.)", "Pearson r", "p"],
              ["reward model", f"{_f(lb['proxy']['spearman'], 2)} ± "
               f"{_f(lb['proxy']['stderr'], 2)}", _f(lb["proxy"]["pearson"], 2),
               _p(lb["proxy"]["p"])],
              ["gold judge", f"{_f(lb['gold']['spearman'], 2)} ± {_f(lb['gold']['stderr'], 2)}",
               _f(lb["gold"]["pearson"], 2), _p(lb["gold"]["p"])]]
    if "p_difference" in lb:
        length.append(["difference (reward − gold)", f"{_f(lb['difference'], 2)} ± "
                       f"{_f(lb['difference_se'], 2)}", "—", _p(lb["p_difference"])])
    length_note = (("Flagged: " if lb["flag"] else "Not flagged: ")
                   + (lb["reason"] if lb.get("reason") else
                      f"the reward favours {lb['direction']} responses"
                      + (" more than the gold judge does." if lb["flag"] else
                         f" no more than the gold judge does (by over {lb.get('margin', 0)}), "
                         "or not significantly."))
                   + f" Test: {lb['test']}." if "test" in lb else
                   ("Flagged." if lb["flag"] else "Not flagged."))
    pert = [["edit", "responses (left out: cut)", "reward change", "gold change", "gap (s.d.)",
             "exploitable", "example"]]
    for name, p in hack["perturbations"].items():
        if "gap_sd" not in p:
            pert.append([name, f"{p['tested']} ({p['left_out']})", "—", "—", "—", "not tested",
                         p["reason"]])
            continue
        pert.append([name, f"{p['tested']} ({p['left_out']})",
                     f"{_f(p['proxy_change']['mean'])} ± {_f(p['proxy_change']['stderr'])}",
                     f"{_f(p['gold_change']['mean'])} ± {_f(p['gold_change']['stderr'])}",
                     f"{_f(p['gap_sd']['mean'], 2)} ± {_f(p['gap_sd']['stderr'], 2)}",
                     f"{'yes' if p['flag'] else 'no'} ({p_text(p.get('p'))})",
                     f"{p['example']['before']} ⟶ {p['example']['after']}"])
    rw = hack["rewarded_word"]
    pert_note = (f"The most rewarded word to append is '{rw['word']}' (+{_f(rw['mean_gain'])} "
                 f"reward on average, chosen on {rw.get('chosen_on', '?')} other responses). "
                 "Changes are means ± standard errors over the same responses; the gap is "
                 "Δreward/σ_reward − Δgold/σ_gold per response, flagged by a one-sided t-test "
                 "of mean gap > 0.25 s.d. at p < 0.01. Edited responses the reward model would "
                 "see cut (no EOS) are left out.")
    regions = [["region", "responses", "mean reward", "representative texts"]] + [
        [str(r["index"] + 1), str(r["size"]), _f(r["mean_reward"]), " | ".join(r["texts"])]
        for r in result["atlas"]["regions"]]
    return [("Model card", model, [], ""),
            ("Training data", datasets, [], "no training data was read"),
            ("Annotators", people, [agree_note], "the comparisons name no annotator"),
            ("Concepts (TCAV)", concepts, ([concept_note] if result["tcav"] else [])
             + left_notes, concept_empty),
            ("Reward vs length", length, [length_note], ""),
            ("Edits that should not help", pert, [pert_note],
             "no edit could be tested: no response had a word to repeat, and the other edits "
             "were left out"),
            ("Atlas regions", regions, [], "no response to place in the atlas")]


def _gap_note(hack: dict) -> str:
    g = hack.get("gold_proxy_gap")
    if not g:
        return "No PPO metrics in this run directory."
    if "gap" not in g:
        return g.get("reason", "")
    t = g["trend"]
    if "reason" in t:
        return f"Not flagged: the gold score's trend was not tested ({t['reason']})."
    ev = g.get("evaluation")
    return (f"The gold score's running mean went from {number(t['start'])} to "
            f"{number(t['peak'])} near iteration {t['peak_step']} (KL "
            f"{number(t.get('kl_at_peak'), 2)}) and ended at {number(t['end'])} (KL "
            f"{number(t.get('kl_at_end'), 2)}); final gap {g['final_gap']:.2f} s.d. Rise and "
            f"fall: {p_text(t['p_rise'])} and {p_text(t['p_fall'])} (test: {t['test']}, "
            f"α = {t['alpha']})."
            + (f" The run's final evaluation scores {number(ev['after'])} ± "
               f"{number(ev['after_stderr'])}, " + ("below" if ev["confirmed"] else
                                                   "not significantly below") +
               f" the peak {number(ev['peak'])} (one-sided z-test, {p_text(ev['p'])})."
               if ev else " No evaluation of the final policy to check it against.")
            + (" Flagged: the reward model kept paying after the gold judge stopped."
               if g["flag"] else " Not flagged."))


def _image(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _token_html(tokens, attributions) -> str:
    """Tokens as spans shaded by attribution: green raises the reward, red lowers it."""
    scale = max((abs(a) for a in attributions), default=0.0) or 1.0
    spans = []
    for t, a in zip(tokens, attributions):
        alpha = min(abs(a) / scale, 1.0) * 0.75
        color = f"rgba(22,163,74,{alpha:.2f})" if a > 0 else f"rgba(220,38,38,{alpha:.2f})"
        spans.append(f'<span class="tok" style="background:{color}" title="{a:+.4f}">'
                     f"{_e(t)}</span>")
    return "".join(spans)


def _e(text) -> str:
    """Text for HTML: control characters dropped (`eval.report.line_text` keeps line breaks
    as spaces), then escaped."""
    return html.escape(line_text(text))


def prompt_line(prompt) -> str:
    """A prompt on one line: its text, or a conversation's turns as "role: content" joined by
    " / "."""
    if isinstance(prompt, str):
        return line_text(prompt).strip()
    return " / ".join(f"{m['role']}: {line_text(m['content']).strip()}" for m in prompt)


def _prompt_html(prompt) -> str:
    """A prompt for the page: its text, or a conversation turn by turn with each role in
    bold."""
    if isinstance(prompt, str):
        return _e(prompt)
    return "<br>".join(f"<b>{_e(m['role'])}:</b> {_e(m['content'])}" for m in prompt)


def _baseline_text(result: dict) -> str:
    """Which baseline the explanations integrate from."""
    names = {s.get("baseline", "pad token") for ex in result["examples"] for s in ex["sides"]}
    if names == {"mean embedding"}:
        return ("baseline: the vocabulary's mean embedding at the median norm, since the pad "
                "token's embedding is zero and a zero baseline puts a near-step in a pre-norm "
                "model's path")
    return "baseline: the pad token's embedding"


def _gap_text(side: dict) -> str:
    """An explanation's completeness gap, marked when above 1%."""
    gap = f"{100 * side['completeness']:.2f}%"
    steps = f" at {side['ig_steps']} steps" if "ig_steps" in side else ""
    if side.get("complete", side["completeness"] <= 0.01):
        return f"completeness gap {gap}{steps}"
    return (f"⚠ completeness gap {gap}{steps}, above 1%: these attributions do not add up to "
            "the reward's change")


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1f2937}h1{font-size:1.6em}h2{border-bottom:1px solid #e5e7eb;padding-bottom:.2em;
margin-top:1.6em}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #d1d5db;padding:.3em .6em;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
th{background:#f3f4f6}.bias{background:#fef3c7;border-left:4px solid #d97706;padding:.5em 1em}
.tok{padding:1px 2px;border-radius:3px;white-space:pre}.ex{border:1px solid #e5e7eb;
border-radius:6px;padding:.6em 1em;margin:.8em 0}.muted{color:#6b7280;font-size:.85em}
img{max-width:100%}"""


def write_html(result: dict, path, plots) -> Path:
    """The audit as one HTML file: styles inline, figures as data URIs, every text escaped."""
    path, plots = Path(path), Path(plots)
    e = _e
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{TITLE}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{TITLE}</h1>",
             f'<p class=muted>{e(result["card"]["reward_dir"])} · {result["samples"]["n"]} '
             f'responses · {result["seconds"]} s</p>', "<h2>Known biases</h2>"]
    biases = result["card"]["known_biases"]
    parts.append('<div class=bias id=biases><ul>' + "".join(f"<li>{e(b)}</li>" for b in biases)
                 + "</ul></div>" if biases else "<p>None found by these diagnostics.</p>")
    for title, rows, notes, empty in _sections(result):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" +
                     "".join(f"<th>{e(c)}</th>" for c in rows[0]) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows[1:]]
        if len(rows) == 1:
            parts.append(f'<tr><td colspan={len(rows[0])}>Empty: {e(empty)}.</td></tr>')
        parts.append("</table>" + "".join(f"<p>{e(n)}</p>" for n in notes))
        if title == "Edits that should not help":
            parts.append(f"<h2>Gold–proxy gap over PPO</h2><p>{e(_gap_note(result['hacking']))}"
                         "</p>")
            if (plots / "gold_proxy_gap.png").is_file():
                parts.append(f'<img alt="gold-proxy gap" src="{_image(plots / "gold_proxy_gap.png")}">')
        if title == "Concepts (TCAV)":
            parts.append(f'<h2>Activation atlas</h2><img id=atlas alt="activation atlas" '
                         f'src="{_image(plots / "atlas.png")}"><p class=muted>'
                         f'{e(result["atlas"]["projection"].upper())} of the pooled activations; '
                         "numbers mark the regions below.</p>")
    parts.append("<h2>Explanations</h2><p class=muted>Integrated gradients over the token "
                 f"embeddings ({e(_baseline_text(result))}), its steps doubled until the "
                 "completeness gap is within 1% (at most 1024); green raises the reward, red "
                 "lowers it; hover for the value.</p>")
    if not result["examples"]:
        parts.append("<p>None: examples=0.</p>")
    for ex in result["examples"]:
        parts.append(f'<div class=ex><b>Prompt:</b> {_prompt_html(ex["prompt"])} '
                     f'<span class=muted>(annotator {e(ex["annotator"] or "—")}; the model '
                     f'{"agrees" if ex["agrees"] else "disagrees"} with the label)</span>')
        for s in ex["sides"]:
            unc = "" if s["uncertainty"] is None else f" ± {s['uncertainty']:.3f}"
            parts.append(f'<p><b>{s["label"]}</b> reward {s["reward"]:.3f}{unc}: '
                         f'{_token_html(s["tokens"], s["attributions"])} <span class=muted>'
                         f'prompt {s["prompt_attribution"]:+.3f}; {e(_gap_text(s))}</span></p>')
        parts.append("</div>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path


def write_markdown(result: dict, path, plots) -> Path:
    """The audit as Markdown, figures linked from `plots`."""
    path, plots = Path(path), Path(plots)
    rel = Path(os.path.relpath(plots, path.parent)).as_posix()
    lines = [f"# {TITLE}", "", line_text(f"`{result['card']['reward_dir']}`, "
                                         f"{result['samples']['n']} responses."),
             "", "## Known biases", ""]
    lines += [f"- {line_text(b)}" for b in result["card"]["known_biases"]] or ["None found."]
    for title, rows, notes, empty in _sections(result):
        lines += ["", f"## {title}", "", "| " + " | ".join(map(table_text, rows[0])) + " |",
                  "|---" * len(rows[0]) + "|"]
        lines += ["| " + " | ".join(table_text(c) for c in r) + " |" for r in rows[1:]]
        if len(rows) == 1:
            lines += ["", line_text(f"Empty: {empty}.")]
        lines += [""] + [line_text(n) for n in notes]
        if title == "Concepts (TCAV)":
            lines += ["", "## Activation atlas", "", f"![atlas]({rel}/atlas.png)"]
        if title == "Edits that should not help":
            lines += ["", "## Gold–proxy gap over PPO", "", line_text(_gap_note(result["hacking"]))]
            if (plots / "gold_proxy_gap.png").is_file():
                lines += ["", f"![gap]({rel}/gold_proxy_gap.png)"]
    lines += ["", "## Explanations", "", line_text(
        f"Integrated gradients per token ({_baseline_text(result)}; steps doubled until the "
        "completeness gap is within 1%); [+x] raises the reward."), ""]
    if not result["examples"]:
        lines += ["None: examples=0.", ""]
    for ex in result["examples"]:
        lines.append(f"**{prompt_line(ex['prompt']) or '(empty prompt)'}**")
        for s in ex["sides"]:
            toks = " ".join(f"{t.strip() or '␣'}[{a:+.2f}]"
                            for t, a in zip(s["tokens"], s["attributions"]))
            lines.append(line_text(f"- {s['label']} ({s['reward']:.3f}; {_gap_text(s)}): "
                                   f"{toks}"))
        lines.append("")
    path.write_text("\n".join(lines))
    return path
