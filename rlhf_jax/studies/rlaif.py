"""RLAIF end to end (Bai et al. 2022; Lee et al. 2023): the main job twice on the same seed and
prompts, once with the simulated human annotators' labels and once with a constitution judge's
AI labels, then a report of how the AI labels agree with the gold judge and with the humans, and
of the alignment metrics (gold, proxy, KL, win rate against the start, profanity rate,
distinct-1/2, length) before and after each run."""
from __future__ import annotations

import json
from pathlib import Path

from rlhf_jax import eval as rl_eval, rlaif, train
from rlhf_jax.stages.layout import PipelineLayout
from rlhf_jax.stages.pipeline import run_pipeline
from rlhf_jax.studies.configs.rlaif import RLAIFConfig


# the evaluation's metrics in the report and summary.json (each {"mean", "stderr"}; the win rate
# against the start: after only)
METRICS = ("gold", "proxy", "kl", "kl_k3", "win_rate", "profanity_rate", "distinct_1",
           "distinct_2", "length")


def _side(run_dir: str) -> dict:
    layout = PipelineLayout(run_dir)
    ev = json.loads(layout.evaluation.read_text())
    info = json.loads(layout.info.read_text())
    rm = json.loads(layout.stage("reward").eval_summary.read_text())
    out = {"info": info, "reward_accuracy": rm.get("eval/accuracy", float("nan"))}
    for when in ("before", "after"):
        summary = ev[when]["summary"]
        out[when] = {**{k: summary[k] for k in METRICS if k in summary},
                     "samples": len(ev[when]["rows"])}
    return out


def run_rlaif(cfg: RLAIFConfig) -> Path:
    """Run both pipelines (each resumes where it stopped) and write `report.md`."""
    runs = cfg.pipelines()
    for name, pcfg in runs.items():
        print(f"=== {name} labels", flush=True)
        run_pipeline(pcfg)
    if not train.is_main_process():
        return Path(cfg.run_dir) / "report.md"
    report = write_rlaif_report(cfg, {name: _side(p.run_dir) for name, p in runs.items()})
    print(f"report: {report}", flush=True)
    return report


def write_rlaif_report(cfg: RLAIFConfig, sides: dict) -> Path:
    """Write `report.md` and `summary.json` into `cfg.run_dir` from each side's run ("human",
    "ai": its run.json info, reward-model accuracy and before/after metrics, as `_side` reads
    them); return the report's path. A metric a side lacks shows as —."""
    runs = cfg.pipelines()
    ai = sides["ai"]["info"]

    fmt = rl_eval.report.mean_se_text

    gold = runs["ai"].gold
    lines = [
        "# RLAIF: AI labels from a constitution beside human labels", "",
        f"The main job twice on seed {runs['ai'].seed} and the same prompts"
        f"{' (quick budgets)' if cfg.quick else ''}: once labelled by the simulated human "
        f"annotators (Bradley–Terry temperatures {runs['ai'].annotator_temperatures} around "
        f"the gold judge `{gold}`), once by the constitution judge "
        f"(`{cfg.constitution or rlaif.DEFAULT_CONSTITUTION.name}`: one principle per "
        "comparison, drawn by weight). The AI labels carry the judge's probability, which the "
        "reward loss uses as a soft label.", "",
        f"- AI labels agree with the gold judge on {ai['gold_label_agreement']:.3f} of the "
        f"{ai['comparisons']} comparisons (human labels: "
        f"{sides['human']['info']['gold_label_agreement']:.3f}), and with the human labels on "
        f"{ai['ai_human_agreement']:.3f}.",
        "- AI labels per principle: " + ", ".join(
            f"{k.split(':')[-1]} {v}" for k, v in ai["ai_labels_by_principle"].items()) + ".",
        "", "| labels | reward model held-out accuracy | gold before | gold after | KL after, "
        "k1 | KL after, k3 | profanity rate before | profanity rate after |",
        "|---|---|---|---|---|---|---|---|"]
    for name, s in sides.items():
        lines.append(f"| {name} | {rl_eval.report.number(s['reward_accuracy'])} | "
                     f"{fmt(s['before']['gold'])} | {fmt(s['after']['gold'])} | "
                     f"{fmt(s['after']['kl'])} | {fmt(s['after'].get('kl_k3'))} | "
                     f"{fmt(s['before'].get('profanity_rate'))} | "
                     f"{fmt(s['after'].get('profanity_rate'))} |")
    lines += ["", "| labels | policy | proxy (reward model) | win rate vs start (gold) | "
              "distinct-1 | distinct-2 | length (tokens) |", "|---|---|---|---|---|---|---|"]
    for name, s in sides.items():
        for when in ("before", "after"):
            m = s[when]
            lines.append(f"| {name} | {when} | {fmt(m.get('proxy'))} | "
                         f"{fmt(m.get('win_rate'))} | {fmt(m.get('distinct_1'))} | "
                         f"{fmt(m.get('distinct_2'))} | {fmt(m.get('length'), 1)} |")
    lines += ["", "Every ± is a standard error over the evaluation's responses. Profanity rate: "
              "the share of the responses that alt-profanity-check's classifier flags (P > "
              "0.5). Win rate vs start: the share of prompts where the run's response gets a "
              "higher gold score than the starting policy's response to the same prompt, ties "
              "counting half (— before: the start itself). Distinct-n: distinct n-grams over "
              "all responses / their total words (Li et al. 2016), its standard error a bootstrap over "
              f"responses ({rl_eval.metrics.BOOTSTRAP_RESAMPLES} resamples). "
              + rl_eval.report.KL_NOTE + " Each run's own report: "
              "[human](human/report.md), [ai](ai/report.md)."]
    report = Path(cfg.run_dir) / "report.md"
    lines = [x if x.startswith("|") else rl_eval.report.line_text(x) for x in lines]
    report.write_text("\n".join(lines) + "\n")
    (Path(cfg.run_dir) / "summary.json").write_text(json.dumps(
        {k: {w: v for w, v in s.items() if w != "info"} for k, s in sides.items()} |
        {"ai_gold_agreement": ai["gold_label_agreement"],
         "ai_human_agreement": ai["ai_human_agreement"],
         "human_gold_agreement": sides["human"]["info"]["gold_label_agreement"]},
        indent=1, default=float))
    return report
