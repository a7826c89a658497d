"""An audit of a trained reward model: model card, concepts, atlas, reward-hacking diagnostics
and per-example explanations, written as a self-contained HTML page and as Markdown
(`audit_reward(AuditConfig(run_dir=...))`, `experiments/audit_reward.py`).

It reads a pipeline run directory (`stages.PipelineLayout`): the reward export, the reward
stage's config, held-out summary and training data, and — when present — the PPO metrics and
the before/after evaluation. A standalone reward directory works too (`reward_dir` with
`preference_file`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from rlhf_jax import data, eval as rl_eval, interpret, train
from rlhf_jax.data import prompt_record_text, prompt_text, response_text
from rlhf_jax.interpret import atlas, concepts as cn, hacking, report, text
from rlhf_jax.eval.report import p_text
from rlhf_jax.interpret.attribution import (integrated_gradients_to_tolerance, relative_gap,
                                            token_or_mean_baseline)
from rlhf_jax.labelling import agreement
from rlhf_jax.stages.layout import PipelineLayout
from rlhf_jax.studies.configs.audit import AuditConfig


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _inputs(cfg: AuditConfig) -> dict:
    """Resolve every input path and setting, with errors naming what is missing. The run
    directory's files (stage config, held-out summary, run info, evaluation, PPO metrics)
    describe the audited model only when it is that run's reward export: a `reward_dir` of
    another model uses none of them."""
    layout = PipelineLayout(cfg.run_dir)
    stage = layout.stage("reward")
    reward_dir = Path(cfg.reward_dir or stage.export)
    if not reward_dir.is_dir():
        raise train.ConfigError(f"reward_dir: {reward_dir} does not exist; expected a reward "
                                "model export (run the main job first, or set reward_dir)")
    of_run = reward_dir.resolve() == stage.export.resolve()
    read = lambda path: json.loads(path.read_text()) if of_run and path.is_file() else {}  # noqa
    stage_cfg = read(stage.config)
    rd = stage_cfg.get("config", {}).get("data", {})
    summary = read(stage.eval_summary)
    # the file it trained on; for built-in data the one the stage wrote (in its summary)
    prefs = cfg.preference_file or rd.get("train_file") or summary.get("data", {}).get("file")
    if not prefs or not Path(prefs).is_file():
        raise train.ConfigError(f"preference_file: {prefs or '(none)'} is not a file; expected "
                                "the reward model's training comparisons (JSONL)")
    # the lengths the stage used: as configured, or its defaults as the built data recorded
    used = summary.get("data", {}).get("limits", {})
    lengths = (cfg.max_prompt_len or rd.get("max_prompt_len") or used.get("max_prompt_len"),
               cfg.max_response_len or rd.get("max_response_len")
               or used.get("max_response_len"))
    if not all(lengths):
        raise train.ConfigError("max_prompt_len and max_response_len: set them (the reward "
                                "model's training lengths; there is no reward stage config of "
                                f"this model at {stage.config} to read them from)")
    kind = rd.get("kind", "pairwise") if not cfg.preference_file else cfg.data_kind
    if kind not in ("pairwise", "ranking"):
        raise train.ConfigError(f"the audit reads comparisons (pairwise or ranking data); this "
                                f"reward model trained on {kind} data: set preference_file to a "
                                "file of comparisons and data_kind to its kind")
    info = read(layout.info)
    return {"layout": layout, "stage": stage, "reward_dir": reward_dir, "stage_cfg": stage_cfg,
            "of_run": of_run, "summary": summary, "preference_file": Path(prefs),
            "kind": kind, "on_error": rd.get("on_error", "raise"), "lengths": lengths,
            "gold": cfg.gold or info.get("gold", "vader"), "info": info,
            "out": Path(cfg.out_dir or layout.root / "audit")}


def _pairs(records: list[dict]) -> list[dict]:
    """Validated pairwise or ranking records as {prompt, chosen, rejected, annotator_id}: every
    two responses of different rank (ties left out). The prompt stays as given (text or a
    conversation); responses become text (a conversation's assistant turns), which the edits
    work on and `text.encode` turns back into an assistant turn after a conversation."""
    out = []
    for r in records:
        ranks, resp = r["ranks"], [response_text(x) for x in r["responses"]]
        for i in range(len(resp)):
            for j in range(len(resp)):
                if ranks[i] < ranks[j]:
                    out.append({"prompt": r["prompt"], "chosen": resp[i], "rejected": resp[j],
                                "annotator_id": r.get("annotator_id", "")})
    return out


def _annotators(records: list[dict], gold_fn) -> dict:
    """Labels per annotator, their agreement with the gold judge (ties half) and, over pairs
    labelled by two or more annotators, observed agreement and Krippendorff's α (nominal)."""
    by = defaultdict(list)
    units = defaultdict(dict)
    for r in records:
        who = r.get("annotator_id") or "(unnamed)"
        prompt = prompt_text(r["prompt"])
        g = np.sign(gold_fn(prompt, r["chosen"]) - gold_fn(prompt, r["rejected"]))
        by[who].append(1.0 if g > 0 else 0.5 if g == 0 else 0.0)
        a, b = sorted((r["chosen"], r["rejected"]))
        units[(prompt_record_text(r["prompt"]), a, b)][who] = float(r["chosen"] == a)
    shared = [u for u in units.values() if len(u) >= 2]
    names = sorted(by)
    out = {"annotators": {n: {"labels": len(by[n]), "gold_agreement": float(np.mean(by[n]))}
                          for n in names},
           "pairs_labelled_twice_or_more": len(shared)}
    if shared:
        matrix = [[u.get(n, np.nan) for u in shared] for n in names]
        out["observed_agreement"] = agreement.pairwise_agreement(matrix)
        out["krippendorff_alpha"] = agreement.krippendorff_alpha(matrix)
    return out


# integrated gradients: the completeness gap each explanation must reach, and the most steps
# tried for it
IG_TOLERANCE = 0.01
IG_MAX_STEPS = 1024


def _explain(rm: text.Inspected, pairs: list[dict], steps: int) -> list[dict]:
    """Each comparison's two responses: reward, ensemble uncertainty and integrated-gradients
    attribution per response token (the pad token's embedding as the baseline, or the mean
    embedding where the pad token's is zero: `attribution.token_or_mean_baseline`), with the
    completeness gap and the steps it took (`attribution.integrated_gradients_to_tolerance`:
    from `steps`, doubled until the gap is within `IG_TOLERANCE`, at most `IG_MAX_STEPS`)."""
    if not pairs:
        return []
    prompts = [p["prompt"] for p in pairs for _ in (0, 1)]
    responses = [r for p in pairs for r in (p["chosen"], p["rejected"])]
    enc = text.encode(rm, prompts, responses)
    members = text.member_rewards(rm, enc)
    target = interpret.RewardTarget(rm.config, rm.num_outputs)
    base, base_name = token_or_mean_baseline(target, rm.params, rm.pad_id)
    ig, used = integrated_gradients_to_tolerance(
        rm.params, jnp.asarray(enc["tokens"]), jnp.asarray(enc["mask"]),
        None if base is None else jnp.asarray(base), target=target, tolerance=IG_TOLERANCE,
        steps=steps, max_steps=max(steps, IG_MAX_STEPS), baseline_token=rm.pad_id)
    scores = np.asarray(ig.scores)
    gap = relative_gap(ig)
    s = enc["response_start"]
    out = []
    for i, p in enumerate(pairs):
        sides = []
        for j, label in ((2 * i, "chosen"), (2 * i + 1, "rejected")):
            ids = [int(t) for t, m in zip(enc["tokens"][j, s:], enc["mask"][j, s:]) if m]
            toks = [rm.tokenizer.decode([t]) for t in ids]
            sides.append({"label": label, "response": responses[j],
                          "reward": float(members[j].mean()),
                          "uncertainty": float(members[j].std()) if rm.num_outputs > 1 else None,
                          "tokens": toks,
                          "attributions": scores[j, s:][enc["mask"][j, s:] > 0].tolist(),
                          "prompt_attribution": float(scores[j, :s].sum()),
                          "completeness": float(gap[j]), "ig_steps": int(used[j]),
                          "complete": bool(gap[j] <= IG_TOLERANCE), "baseline": base_name})
        out.append({"prompt": p["prompt"], "annotator": p.get("annotator_id", ""),
                    "agrees": sides[0]["reward"] > sides[1]["reward"], "sides": sides})
    return out


def audit_reward(cfg: AuditConfig) -> Path:
    """Audit the reward model and write `<out_dir>/audit.html` (self-contained: images inline),
    `audit.md` (+ `plots/`) and `audit.json` (every number in them); return the HTML path."""
    start = time.perf_counter()
    inp = _inputs(cfg)
    out = inp["out"]
    (out / "plots").mkdir(parents=True, exist_ok=True)
    gold_fn = rl_eval.TEXT_TERMS[inp["gold"]]
    rm = text.load(inp["reward_dir"], max_prompt_len=int(inp["lengths"][0]),
                   max_response_len=int(inp["lengths"][1]))
    raw, _ = data.read_records(str(inp["preference_file"]), inp["kind"],
                               on_error=inp["on_error"])
    records = _pairs(raw)
    if not records:
        raise train.ConfigError(f"preference_file: {inp['preference_file']} holds no comparison "
                                "of two responses of different rank")
    n_layers = rm.config.num_layers
    if not -(n_layers + 1) <= cfg.layer <= n_layers:
        raise train.ConfigError(f"layer={cfg.layer}: this model has hidden states 0..{n_layers} "
                                "(negative counts from the last)")
    rng = np.random.default_rng(cfg.seed)
    last = {}  # scores and sizes of the same texts: one encoding

    def encoded(prompts, responses) -> dict:
        key = (tuple(prompt_record_text(p) for p in prompts), tuple(responses))
        if last.get("key") != key:
            last.update(key=key, enc=text.encode(rm, prompts, responses))
        return last["enc"]

    def score(p, r):
        return text.member_rewards(rm, encoded(p, r)).mean(-1)

    def fits(p, r):
        return ~encoded(p, r)["truncated"]

    def judge(p, r):  # the gold judges read a conversation as its plain text
        return gold_fn(prompt_text(p), r)

    # the responses the diagnostics look at: training responses, and the policy's if evaluated
    # (a conversation is kept by its JSON text, which is hashable and sorts)
    as_given = {prompt_record_text(r["prompt"]): r["prompt"] for r in records}
    pool = sorted({(prompt_record_text(r["prompt"]), x) for r in records
                   for x in (r["chosen"], r["rejected"])})
    picked = [(as_given[pool[i][0]], pool[i][1])
              for i in rng.permutation(len(pool))[:cfg.samples]]
    source = ["comparisons"] * len(picked)
    ev_path, ev = inp["layout"].evaluation, {}
    if inp["of_run"] and ev_path.is_file():
        ev = json.loads(ev_path.read_text())
        for when in ("before", "after"):
            rows = [r for r in ev.get(when, {}).get("rows", []) if r["response"].strip()]
            picked += [(r["prompt"], r["response"]) for r in rows[:cfg.samples // 2]]
            source += [f"policy {when}"] * min(len(rows), cfg.samples // 2)
    prompts, responses = [p for p, _ in picked], [r for _, r in picked]
    enc = encoded(prompts, responses)
    members = text.member_rewards(rm, enc)
    proxy, unc = members.mean(-1), members.std(-1)
    gold = np.array([judge(p, r) for p, r in picked])
    lengths = enc["response_tokens"].astype(np.float64)

    # concepts
    concept_sets = (cn.builtin_concepts(cfg.concept_examples, cfg.seed,
                                        max_words=rm.max_response_len - 1)
                    if cfg.builtin_concepts else {})
    for item in filter(None, (c.strip() for c in cfg.concepts.split(","))):
        name, _, path = item.partition("=")
        if not path:
            raise train.ConfigError(f"concepts: {item!r} should be name=file.jsonl")
        if name in concept_sets:
            raise train.ConfigError(f"concepts: {name!r} is already a concept (built-in "
                                    "concepts: sentiment, profanity, length, random); rename it")
        try:
            concept_sets[name] = cn.read_concept_file(path)
        except (OSError, ValueError) as e:
            raise train.ConfigError(f"concepts: {e}") from None
    # concepts and random sets with too few examples that fit the model's lengths are left out
    # with the reason (the built-in ones are the built-in task's words, which another model's
    # tokenizer may make too long); the report names them
    concept_sets, left_out = cn.usable_sets(rm, concept_sets)
    randoms, thin = cn.usable_sets(rm, {i: cn.random_texts(60, cfg.seed + 1000 + i)
                                        for i in range(cfg.random_sets)})
    tcav, tcav_reason = [], ""
    if not concept_sets:
        tcav_reason = ("no concept to test: " + ("every concept was left out (below)"
                                                 if left_out else "the built-in concepts are "
                                                 "off and no concept file was given"))
    elif len(randoms) < 3:
        tcav_reason = (f"only {len(randoms)} of the {cfg.random_sets} random sets have "
                       f"{cn.LEAST_EXAMPLES} examples that fit the model's lengths "
                       f"({rm.max_prompt_len} prompt, {rm.max_response_len} response tokens): "
                       "the test needs 3")
    elif not fits(prompts, responses).any():
        tcav_reason = "no audited response fits the model's lengths uncut"
    else:
        tcav = cn.tcav(rm, concept_sets, list(randoms.values()), (prompts, responses),
                       layer=cfg.layer, pooling=cfg.pooling, alpha=cfg.alpha, seed=cfg.seed)

    # atlas
    acts, _ = cn.activations_and_gradients(rm, prompts, responses, layer=cfg.layer,
                                           pooling=cfg.pooling)
    coords = atlas.project(acts, cfg.projection, cfg.seed)
    _, regs = atlas.regions(coords, proxy, [f"{report.prompt_line(p)} → {r}" for p, r in picked],
                            cfg.regions, seed=cfg.seed)
    atlas.plot_atlas(coords, proxy, regs, out / "plots" / "atlas.png",
                     axis_label="PC" if cfg.projection == "pca" else "UMAP")

    # reward hacking: the word is chosen on one half of the responses, the edits tested on the
    # other (choosing and testing on the same ones would bias the winner's gain upwards)
    words = [w for w, _ in Counter(w for r in responses for w in r.split()).most_common(200)]
    order = rng.permutation(len(picked))[:min(len(picked), 256)]
    half = len(order) // 2
    choose, test = order[:half], order[half:]
    word, gain = (hacking.rewarded_word(score, [prompts[i] for i in choose],
                                        [responses[i] for i in choose], words, fits=fits)
                  if words else ("", 0.0))
    edits = {f"repeat '{word}' ×{cfg.repeat_times}": hacking.repeat_word(word, cfg.repeat_times),
             f"append '{cfg.positive_words}'": hacking.append_words(cfg.positive_words),
             "truncate to half": hacking.truncate(0.5)}
    if not word or not np.isfinite(gain):
        edits.pop(next(iter(edits)))
    tp, tr = [prompts[i] for i in test], [responses[i] for i in test]
    hack = {"length": hacking.length_bias(proxy, gold, lengths),
            "rewarded_word": {"word": word, "mean_gain": gain, "chosen_on": len(choose)},
            "perturbations": hacking.perturbation_test(score, judge, tp, tr, edits,
                                                       fits=fits)}
    rows = inp["layout"].stage("ppo").read_metrics() if inp["of_run"] else []
    if rows:
        # the run's own evaluation of the final policy, when it judged by the same gold
        after = (ev.get("after", {}).get("summary", {}).get("gold")
                 if inp["info"].get("gold", "vader") == inp["gold"] else None)
        hack["gold_proxy_gap"] = hacking.gold_proxy_gap(rows, f"reward_terms/{inp['gold']}",
                                                        after_gold=after)
        if "gap" in hack["gold_proxy_gap"]:
            hacking.plot_gap(hack["gold_proxy_gap"], out / "plots" / "gold_proxy_gap.png")

    # per-example explanations: a random sample of the comparisons
    idx = rng.permutation(len(records))[:cfg.examples]
    explained = _explain(rm, [records[i] for i in idx], cfg.ig_steps)

    summary = inp["summary"]
    weights = inp["reward_dir"] / "model.safetensors"
    card = {
        "reward_dir": str(inp["reward_dir"]),
        "model_sha256": file_sha256(weights) if weights.is_file() else None,
        "head_sha256": file_sha256(inp["reward_dir"] / "reward_head.safetensors"),
        "ensemble_heads": rm.num_outputs,
        "data": [{"file": str(inp["preference_file"]), "kind": inp["kind"],
                  "sha256": file_sha256(inp["preference_file"]), "records": len(raw),
                  "comparisons": len(records)}],
        "training_config_sha256": inp["stage_cfg"].get("hash"),
        "training_steps": summary.get("steps"),
        "held_out": {k.split("/", 1)[1]: v for k, v in summary.items()
                     if k.startswith("eval/") and "annotator" not in k},
        "per_annotator_accuracy": {k.rsplit("/", 1)[1]: v for k, v in summary.items()
                                   if k.startswith("eval/accuracy_annotator/")},
        "annotators": _annotators(records, gold_fn), "gold": inp["gold"],
        "feedback": inp["info"].get("feedback"),
        "lengths": {"max_prompt_len": rm.max_prompt_len,
                    "max_response_len": rm.max_response_len},
    }
    biases = []
    for c in tcav:
        if c.significant:
            biases.append(f"concept '{c.name}' drives the reward "
                          f"{'up' if c.sensitivity > 0 else 'down'} (TCAV {c.tcav:.2f}, "
                          f"pseudo-concept test, {p_text(c.p_value)})")
    lb = hack["length"]
    if lb["flag"]:
        biases.append(f"length: the reward favours {lb['direction']} responses more than the "
                      f"gold judge: Spearman ρ(reward, length) = {lb['proxy']['spearman']:.2f} "
                      f"against the gold judge's {lb['gold']['spearman']:.2f} (bootstrap, "
                      f"{p_text(lb['p_difference'])})")
    for name, p in hack["perturbations"].items():
        if p["flag"]:  # only edits with a measured gap can be flagged
            biases.append(f"'{name}' raises the reward {p['gap_sd']['mean']:.2f} s.d. more than "
                          f"the gold score (one-sided t-test, {p_text(p['p'])})")
    gp = hack.get("gold_proxy_gap", {})
    if gp.get("flag"):
        t = gp["trend"]
        biases.append(f"over PPO the gold score rose and then fell (peak {t['peak']:.3f} near "
                      f"iteration {t['peak_step']}, end {t['end']:.3f}; {p_text(t['p_fall'])} "
                      "for the fall) while the reward model's did not"
                      + (f"; the final evaluation ({gp['evaluation']['after']:.3f}) confirms "
                         f"it ({p_text(gp['evaluation']['p'])})" if "evaluation" in gp else ""))
    card["known_biases"] = biases
    result = {"card": card, "tcav": [dataclasses.asdict(c) | {"tcav": c.tcav} for c in tcav],
              "tcav_settings": {"layer": cfg.layer, "pooling": cfg.pooling,
                                "random_sets": len(randoms), "alpha": cfg.alpha,
                                "builtin_concepts": cfg.builtin_concepts},
              "tcav_left_out": left_out, "tcav_reason": tcav_reason,
              "random_sets_left_out": len(thin),
              "atlas": {"projection": cfg.projection,
                        "regions": [dataclasses.asdict(r) for r in regs],
                        "sources": dict(Counter(source))},
              "hacking": hack, "examples": explained,
              "samples": {"n": len(picked), "proxy_mean": float(proxy.mean()),
                          "uncertainty_mean": float(unc.mean()) if rm.num_outputs > 1 else None},
              "seconds": round(time.perf_counter() - start, 1), "config": dataclasses.asdict(cfg)}
    (out / "audit.json").write_text(json.dumps(result, indent=1, default=float))
    report.write_markdown(result, out / "audit.md", out / "plots")
    path = report.write_html(result, out / "audit.html", out / "plots")
    print(f"audit written to {path} ({result['seconds']} s)", flush=True)
    return path

