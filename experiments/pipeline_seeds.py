"""Run the end-to-end pipeline over several seeds and tabulate gold/proxy/KL before and after.

    python experiments/pipeline_seeds.py [--seeds 0,1,2] [--run-dir runs/seeds]

This reproduces the README's seed table: it shows whether PPO's gold improvement exceeds
seed-to-seed noise.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rlhf_pipeline import main as pipeline  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--run-dir", default="runs/seeds")
    args, extra = p.parse_known_args()
    rows = []
    for seed in map(int, args.seeds.split(",")):
        run = os.path.join(args.run_dir, f"seed_{seed}")
        pipeline([f"--config.run_dir={run}", f"--config.seed={seed}", *extra])
        ev = json.load(open(os.path.join(run, "eval.json")))
        rm = json.load(open(os.path.join(run, "reward", "eval_summary.json")))
        info = json.load(open(os.path.join(run, "run.json")))
        b, a = ev["before"]["summary"], ev["after"]["summary"]
        rows.append({"seed": seed, "rm_accuracy": rm["eval/accuracy"],
                     "gold_before": b["gold"]["mean"], "gold_after": a["gold"]["mean"],
                     "proxy_before": b["proxy"]["mean"], "proxy_after": a["proxy"]["mean"],
                     "kl_after": a["kl"]["mean"], "seconds": sum(info["stage_seconds"].values())})
    lines = ["| seed | RM held-out acc. | gold before | gold after | proxy before | proxy after "
             "| KL after | seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['rm_accuracy']:.3f} | {r['gold_before']:.3f} | "
                     f"{r['gold_after']:.3f} | {r['proxy_before']:.3f} | {r['proxy_after']:.3f} "
                     f"| {r['kl_after']:.2f} | {r['seconds']:.0f} |")
    gain = np.array([r["gold_after"] - r["gold_before"] for r in rows])
    before = np.array([r["gold_before"] for r in rows])
    lines.append("")
    lines.append(f"gold gain: mean {gain.mean():.3f}, min {gain.min():.3f}; seed-to-seed spread "
                 f"(std) of the gold score before PPO: {before.std(ddof=1) if len(rows) > 1 else 0:.3f}")
    text = "\n".join(lines)
    os.makedirs(args.run_dir, exist_ok=True)
    with open(os.path.join(args.run_dir, "summary.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
