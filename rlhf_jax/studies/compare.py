"""The method comparison as a library function: `compare_methods(CompareConfig(...))`.

For each seed, one base run (SFT → simulated comparisons → reward model) is shared by every
method, which then learns from the same comparisons (offline methods) or the same reward model
(PPO, RLOO, GRPO, best-of-n), over a sweep of its KL-controlling setting. Each method's sweep
runs in its own process, so its peak memory is its own. The report puts the gold score of every
setting against its KL to the starting policy on one plot (Gao et al. 2022, fig. 1; Rafailov et
al. 2023, fig. 2), tabulates gains, KL, time and memory, and the alignment metrics (win rate
against the starting policy, profanity rate, distinct-1/2, length), and follows one setting's
gold score over training to show over-optimisation (`studies.compare_report`).
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

from rlhf_jax import eval as rl_eval
from rlhf_jax.stages.layout import PipelineLayout, check_run_config, record_run_config
from rlhf_jax.stages.offline import train_offline
from rlhf_jax.stages.pipeline import (PPO_FAMILY, _replace, evaluate_before_after, run_inputs,
                                      run_pipeline, stage_configs)
from rlhf_jax.stages.ppo import train_ppo
from rlhf_jax.studies.compare_report import write_comparison_report
from rlhf_jax.studies.compare_setup import (OVEROPTIMISATION, TEXT_METRICS, CompareConfig,
                                            base_config, sweep)


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
        _, _, ppo_cfg, off_cfg = stage_configs(pcfg, run, *run_inputs(base, layout))
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

