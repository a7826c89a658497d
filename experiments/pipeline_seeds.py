"""Run the end-to-end pipeline over several seeds; tabulate its metrics before and after.

    python experiments/pipeline_seeds.py [--seeds 0,1,2] [--run-dir runs/seeds] [--config.x=v]

This reproduces the README's seed table: it shows whether PPO's gold improvement exceeds
seed-to-seed noise. A second table gives each seed's win rate against the starting policy
(judged by gold), profanity rate, distinct-1/2 and length, each as mean ± standard error over
that seed's evaluation.
"""
import argparse
import dataclasses
import json
import os

import numpy as np

from rlhf_jax import stages, train
from rlhf_jax.train.config_help import config_help

# the evaluation's text metrics in the second table, before and after
METRICS = ("profanity_rate", "distinct_1", "distinct_2", "length")
DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "pipeline.py")


def main():
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter,
        epilog="Every key of the main job (each seed's run) as --config.KEY=VALUE:\n\n"
        + "\n".join(config_help(stages.PipelineConfig())))
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds, one run each")
    p.add_argument("--run-dir", default="runs/seeds",
                   help="where each seed's run (seed_<n>/) and summary.md go")
    args, extra = p.parse_known_args()
    try:
        base = train.config_from_dict(stages.PipelineConfig, train.parse_config(extra, DEFAULT))
    except train.ConfigError as e:
        p.exit(2, f"error: {e}\n")
    rows = []
    cache = (os.path.join(args.run_dir, "compile_cache") if base.compile_cache == "auto"
             else base.compile_cache)  # one for all seeds: their programs are the same
    for seed in map(int, args.seeds.split(",")):
        cfg = dataclasses.replace(base, run_dir=os.path.join(args.run_dir, f"seed_{seed}"),
                                  seed=seed, compile_cache=cache)
        stages.run_pipeline(cfg)
        layout = stages.PipelineLayout(cfg.run_dir)
        ev = json.loads(layout.evaluation.read_text())
        rm = json.loads(layout.stage("reward").eval_summary.read_text())
        info = json.loads(layout.info.read_text())
        b, a = ev["before"]["summary"], ev["after"]["summary"]
        rows.append({"seed": seed, "rm_accuracy": rm["eval/accuracy"],
                     "gold_before": b["gold"]["mean"], "gold_after": a["gold"]["mean"],
                     "proxy_before": b["proxy"]["mean"], "proxy_after": a["proxy"]["mean"],
                     "kl_after": a["kl"]["mean"], "seconds": sum(info["stage_seconds"].values()),
                     "win_rate": a["win_rate"],
                     **{f"{q}_{w}": s[q] for q in METRICS for w, s in (("before", b),
                                                                      ("after", a))}})
    lines = ["| seed | RM held-out acc. | gold before | gold after | proxy before | proxy after "
             "| KL after | seconds |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['rm_accuracy']:.3f} | {r['gold_before']:.3f} | "
              f"{r['gold_after']:.3f} | {r['proxy_before']:.3f} | {r['proxy_after']:.3f} "
              f"| {r['kl_after']:.2f} | {r['seconds']:.0f} |" for r in rows]
    fmt = lambda s, d=3: f"{s['mean']:.{d}f} ± {s['stderr']:.{d}f}"  # noqa: E731
    lines += ["", "| seed | win rate vs start | profanity before | profanity after | distinct-1 "
              "before | distinct-1 after | distinct-2 before | distinct-2 after | length before "
              "| length after |", "|---" * 10 + "|"]
    lines += [f"| {r['seed']} | {fmt(r['win_rate'])} | " + " | ".join(
        fmt(r[f"{q}_{w}"], 1 if q == "length" else 3) for q in METRICS
        for w in ("before", "after")) + " |" for r in rows]
    gain = np.array([r["gold_after"] - r["gold_before"] for r in rows])
    before = np.array([r["gold_before"] for r in rows])
    spread = before.std(ddof=1) if len(rows) > 1 else 0.0
    lines += ["", f"gold gain: mean {gain.mean():.3f}, min {gain.min():.3f}; seed-to-seed spread "
              f"(std) of the gold score before PPO: {spread:.3f}"]
    text = "\n".join(lines)
    os.makedirs(args.run_dir, exist_ok=True)
    with open(os.path.join(args.run_dir, "summary.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
