"""The method comparison as a library function: `compare_methods(CompareConfig(...))`.

For each seed, one base run (SFT → simulated comparisons → reward model) is shared by every
method, which then learns from the same comparisons (offline methods) or the same reward model
(PPO, RLOO, GRPO, best-of-n, online DPO, iterative DPO), over a sweep of its KL-controlling
setting. Each method's sweep runs in its own process, so its peak memory is its own. The report
puts the gold score of every setting against its KL to the starting policy on one plot (Gao et
al. 2022, fig. 1; Rafailov et al. 2023, fig. 2), tabulates gains, KL, samples and judge calls,
time and memory, and the alignment
metrics (win rate against the starting policy, profanity rate, distinct-1/2, length), and
follows one setting's gold score over training to show over-optimisation
(`studies.compare_report`).
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
from rlhf_jax.stages.online import train_online_dpo
from rlhf_jax.stages.pipeline import (PPO_FAMILY, _replace, evaluate_before_after, run_inputs,
                                      run_pipeline, stage_configs)
from rlhf_jax.stages.ppo import train_ppo
from rlhf_jax.studies.compare_report import write_comparison_report
from rlhf_jax.studies.compare_setup import (OVEROPTIMISATION, QUICK_OVEROPTIMISATION,
                                            TEXT_METRICS, CompareConfig, base_config,
                                            iterative_config, quick_groups, sweep)
from rlhf_jax.studies.iterative import iterative_dpo


def run_method(cfg: CompareConfig, seed: int, method: str) -> dict:
    """Every setting of `method`'s sweep on `seed`'s base run: the alignment metrics before
    and after (gold, proxy, KL, profanity rate, distinct-1/2, length; after also the win rate
    against the starting policy), the seconds each took, this process's peak memory, and for
    the over-optimisation setting the per-iteration KL and gold score (in a quick study with
    `QUICK_OVEROPTIMISATION`'s budget)."""
    base = base_config(cfg, seed)
    layout = PipelineLayout(base.run_dir)
    gold_fn = rl_eval.TEXT_TERMS[cfg.gold]
    key, values = sweep(cfg, method)
    results = []
    for value in values:
        run_dir = Path(cfg.run_dir) / f"seed{seed}" / f"{method}-{value}"
        # iterative DPO is no method of the main job: its rounds run the offline stage
        overrides = {"run_dir": str(run_dir), key: value,
                     **({} if method == "iterative_dpo" else {"method": method})}
        if method in ("rloo", "grpo"):
            overrides["ppo.batch_size"] = base.ppo.batch_size // base.group_size
        if cfg.quick and (method, value) == OVEROPTIMISATION:
            overrides.update(QUICK_OVEROPTIMISATION)
        pcfg = _replace(base, overrides)
        run = PipelineLayout(pcfg.run_dir)
        _, _, ppo_cfg, online_cfg, off_cfg = stage_configs(pcfg, run,
                                                           *run_inputs(base, layout))
        reward_dir = str(layout.stage("reward").export)  # the seed's shared reward model
        ppo_cfg = dataclasses.replace(ppo_cfg, reward_dir=reward_dir)
        start = time.perf_counter()
        trained, rows = None, []
        if method in PPO_FAMILY:
            trained = train_ppo(ppo_cfg).export_dir
            rows = run.stage("ppo").read_metrics()
        elif method == "online_dpo":
            trained = train_online_dpo(dataclasses.replace(online_cfg,
                                                           reward_dir=reward_dir)).export_dir
        elif method == "iterative_dpo":
            rounds = iterative_dpo(iterative_config(cfg, pcfg, ppo_cfg.policy_dir, reward_dir,
                                                    value), verbose=False)
            trained = rounds.policy_dir
        elif method != "best_of_n":
            trained = train_offline(off_cfg).export_dir
        seconds = time.perf_counter() - start
        ev = evaluate_before_after(pcfg, ppo_cfg, trained, gold_fn)
        entry = {"method": method, "key": key, "value": value, "seed": seed,
                 "train_seconds": seconds,
                 "eval_seconds": time.perf_counter() - start - seconds,
                 **{f"{w}_{q}": ev[w]["summary"][q] for w in ("before", "after")
                    for q in ("gold", "proxy", "kl", "kl_k3") + TEXT_METRICS
                    if q in ev[w]["summary"]},
                 "after_win_rate": ev["after"]["summary"]["win_rate"],
                 **usage(method, pcfg, ppo_cfg, online_cfg, rounds if method == "iterative_dpo"
                         else None)}
        if (method, value) == OVEROPTIMISATION:
            gk = f"reward_terms/{cfg.gold}"
            entry["trajectory"] = [{"step": r["step"], "kl": r["kl/sequence"], "gold": r[gk],
                                    "proxy": r["score/reward_model"]}
                                   for r in rows if "kl/sequence" in r and gk in r]
        results.append(entry)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"results": results, "peak_rss_mib": peak}


def usage(method: str, pcfg, ppo_cfg, online_cfg, rounds=None) -> dict:
    """The responses a method sampled from its policy and the responses the reward model
    scored while it trained ({"samples", "judge_calls"}): PPO's family every iteration's
    rollout, online DPO every step's K answers per prompt, iterative DPO its rounds' (from
    their summaries), best-of-n its n candidates per evaluation prompt, the offline methods
    none (they read the base run's comparisons)."""
    if method in PPO_FAMILY:
        n = ppo_cfg.steps * ppo_cfg.batch_size * ppo_cfg.rollout.group_size
        return {"samples": n, "judge_calls": n}
    if method == "online_dpo":
        n = online_cfg.steps * online_cfg.batch_size * online_cfg.samples_per_prompt
        return {"samples": n, "judge_calls": n}
    if method == "iterative_dpo":
        return {q: sum(r[q] for r in rounds.history) for q in ("samples", "judge_calls")}
    if method == "best_of_n":
        n = pcfg.best_of_n * pcfg.eval_samples
        return {"samples": n, "judge_calls": n}
    return {"samples": 0, "judge_calls": 0}


def _child(cfg: CompareConfig, seed: int, what, out) -> list[dict]:
    """Run `what` ("base", a method, or a list of methods one after the other) for `seed` in a
    fresh process; each one's JSON result is saved in its `out` path (a rerun of the study
    reuses it, and runs only what has none)."""
    whats, outs = ([what], [out]) if isinstance(what, str) else (list(what), list(out))
    todo = [(w, o) for w, o in zip(whats, outs) if not o.is_file()]
    if todo:
        spec = json.dumps({"config": dataclasses.asdict(cfg), "seed": seed,
                           "what": [w for w, _ in todo], "out": [str(o) for _, o in todo]})
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", "import json, sys; from rlhf_jax.studies."
                               "compare import _worker; _worker(json.loads(sys.argv[1]))",
                               spec], capture_output=True, text=True)
        log = todo[0][1].with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(proc.stdout + proc.stderr)
        names = ", ".join(w for w, _ in todo)
        if proc.returncode != 0:
            raise RuntimeError(f"{names} (seed {seed}) failed; the output is in {log}:\n"
                               + proc.stderr[-2000:])
        print(f"seed {seed} {names}: {time.perf_counter() - start:.0f} s", flush=True)
    return [json.loads(o.read_text()) for o in outs]


def _worker(spec: dict) -> None:
    cfg = CompareConfig(**spec["config"])
    for what, out in zip(spec["what"], spec["out"]):
        if what == "base":
            r = run_pipeline(base_config(cfg, spec["seed"]))
            result = {"seconds": r.seconds,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        else:
            result = run_method(cfg, spec["seed"], what)
        out = Path(out)
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
        # one process per method; a quick study's methods share a few processes, which saves
        # each one's start (importing JAX, tracing the evaluation) that tiny budgets make count
        jobs = [(seed, group) for seed in cfg.seed_list
                for group in (quick_groups(cfg) if cfg.quick
                              else [[m] for m in cfg.method_list])]
        outs = pool.map(lambda job: _child(cfg, job[0], job[1],
                                           [root / f"seed{job[0]}" / f"{m}.json"
                                            for m in job[1]]), jobs)
        done = {(seed, m): out for (seed, group), group_outs in zip(jobs, outs)
                for m, out in zip(group, group_outs)}
        for seed in cfg.seed_list:
            for method in cfg.method_list:
                results += done[(seed, method)]["results"]
                peaks[(method, seed)] = done[(seed, method)]["peak_rss_mib"]
    path = write_comparison_report(cfg, results, peaks, time.perf_counter() - start)
    print(f"report: {path}", flush=True)
    return path

