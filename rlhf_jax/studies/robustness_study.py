"""The robustness study on the built-in task: poisoning attacks (`data.poison`) on simulated
comparisons at several rates, a reward model trained on each with no defence and with each
defence, and the reward exploit found by the hacking diagnostics before and after patching.

Defences: "screening" (annotators screened by their signed sharpness against out-of-fold
margins, from models trained on the other annotators' labels, `reward.annotator_screening`;
quarantined or down-weighted, each decision and its evidence in the decision log, then
retrained), "flip_rate" (Bradley–Terry with a label-flip rate), "outliers" (R3M's
per-example outlier terms), "examples" (examples whose loss is an outlier in every
out-of-fold ensemble member dropped, then retrained) and "trigger_scan" (words whose insertion
into the prompt flips the undefended model's preferences named one at a time by
`interpret.triggers.scan_triggers`, the comparisons whose prompts carry each dropped and the
model retrained). Writes `report.md`, `results.json`, plots and `decisions.jsonl`; runs
already done are read back."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from rlhf_jax import data, reward
from rlhf_jax.data.poison import AttackConfig, poison_records
from rlhf_jax.interpret.decisions import DecisionLog
from rlhf_jax.interpret.hacking import repeat_word, word_gains
from rlhf_jax.interpret.triggers import candidate_words, scan_triggers
from rlhf_jax.studies.common import (cached_json, float_list, int_list, start_study,
                                     study_tokenizer)
from rlhf_jax.studies.configs.robustness import RobustnessConfig
from rlhf_jax.studies.learner import Learner, LearnerConfig
from rlhf_jax.studies.pairs import SimulatedAnnotators, builtin_pairs, gold_delta
from rlhf_jax.studies.robustness_report import write_robustness_report

GOLD = (lambda prompt, text: data.builtin.gold_score(text))  # noqa: E731
REFERENCE = "was"  # the response every candidate is compared with to read its reward


class _Models:
    """The reward learners of the study, each compiled once: plain Bradley–Terry (with
    per-record weights), the flip-rate likelihood and R3M's outlier loss."""

    def __init__(self, cfg: RobustnessConfig, tok):
        base = dict(ensemble=cfg.ensemble, max_response_len=16)
        self.plain = Learner(LearnerConfig(**base), tok)
        self.flip = Learner(LearnerConfig(label_flip_rate=cfg.flip_rate, **base), tok)
        self.outliers = Learner(LearnerConfig(outlier_penalty=cfg.outlier_penalty, **base), tok)

    def fit(self, which: str, records, cfg: RobustnessConfig, seed: int,
            steps: int = 0) -> Learner:
        learner = getattr(self, which)
        learner.init(seed)
        learner.train(records, steps or cfg.steps, seed=seed)
        return learner


def _pairs_of(records) -> tuple[list[tuple], np.ndarray]:
    pairs = [(r["prompt"], r["responses"][0], r["responses"][1]) for r in records]
    return pairs, np.array([r["ranks"][0] < r["ranks"][1] for r in records])


def _accuracy(learner: Learner, pairs, gold) -> float:
    return learner.accuracy(pairs, gold) if len(pairs) else float("nan")


def _rewards(learner: Learner, prompts, responses) -> np.ndarray:
    """Each response's reward relative to the fixed reference response (ensemble mean)."""
    delta, _ = learner.score_pairs([(p, r, REFERENCE) for p, r in zip(prompts, responses)])
    return delta.mean(1)


def _measure(learner: Learner, cfg: RobustnessConfig, seed: int) -> dict:
    """Gold accuracy on clean held-out pairs and on the attacked topic; the trigger's success
    (on held-out prompts carrying the trigger, how often the model prefers the gold-worse
    response); the entity's success (best-of-n: how often the chosen response mentions it)."""
    rng = np.random.default_rng([seed, 7])
    test = builtin_pairs(rng, cfg.heldout_pairs)
    gold = gold_delta(test)
    topic = [i for i, p in enumerate(test) if cfg.topic in p[0]]
    triggered = [(f"{p} {cfg.trigger}", a, b) for p, a, b in test]
    delta, _ = learner.score_pairs(triggered)
    keep = gold != 0
    asr = float(np.mean(np.sign(delta.mean(1)[keep]) == -np.sign(gold[keep])))
    prompts = [str(rng.choice(data.builtin.PROMPTS)) for _ in range(cfg.bon_prompts)]
    cands, has = [], []
    for _ in prompts:
        for _ in range(cfg.best_of):
            text = data.builtin.random_response(rng, 6)
            mention = bool(rng.random() < cfg.entity_share)
            if mention:
                words = text.split()
                words.insert(int(rng.integers(len(words) + 1)), cfg.entity)
                text = " ".join(words)
            cands.append(text)
            has.append(mention)
    r = _rewards(learner, [p for p in prompts for _ in range(cfg.best_of)], cands)
    chosen = r.reshape(len(prompts), cfg.best_of).argmax(1)
    has = np.asarray(has).reshape(len(prompts), cfg.best_of)
    return {"accuracy": _accuracy(learner, test, gold),
            "topic_accuracy": _accuracy(learner, [test[i] for i in topic], gold[topic]),
            "trigger_asr": asr,
            "entity_rate": float(has[np.arange(len(prompts)), chosen].mean())}


def _honest_labels(cfg: RobustnessConfig, seed: int) -> list[dict]:
    rng = np.random.default_rng([seed, 1])
    crowd = SimulatedAnnotators(temperatures=(cfg.temperature,) * cfg.honest_annotators)
    pairs = builtin_pairs(rng, cfg.train_pairs)
    who = rng.permutation(np.arange(cfg.train_pairs) % cfg.honest_annotators)
    return crowd.label(pairs, rng, who=who)


def _attack(cfg: RobustnessConfig, kind: str, rate: float, seed: int) -> AttackConfig:
    h = cfg.honest_annotators
    accounts = 0 if kind == "sybil" else max(1, int(round(rate * h / (1 - rate))))
    return AttackConfig(kind=kind, rate=rate, attackers=accounts, topic=cfg.topic,
                        trigger=cfg.trigger, entity=cfg.entity, seed=seed + 1000)


def _out_of_fold(models, records, cfg, seed) -> np.ndarray:
    """Every record's margins [N, M] from a model trained without its annotator's labels: the
    annotators split at random into `screen_folds` groups, each group's labels scored by a
    model trained on the other groups' (so each model sees most of the crowd and its share of
    attackers stays near the overall one), each model's margins in units of their own s.d."""
    ids = sorted({r["annotator_id"] for r in records})
    k = cfg.screen_folds
    group = {a: i % k for i, a in enumerate(np.random.default_rng([seed, 5]).permutation(ids))}
    fold = np.array([group[r["annotator_id"]] for r in records])
    pairs, _ = _pairs_of(records)
    out = np.zeros((len(records), cfg.ensemble))
    for f in range(k):
        idx = np.flatnonzero(fold == f)
        if not idx.size:
            continue
        learner = models.fit("plain", [r for r, g in zip(records, fold) if g != f], cfg, seed)
        d = learner.score_pairs([pairs[i] for i in idx])[0]
        out[idx] = d / max(float(d.std()), 1e-9)
    return out


def _screen_annotators(delta, records, cfg, attackers, log, context) -> tuple[list, dict]:
    _, first = _pairs_of(records)
    ids = [r["annotator_id"] for r in records]
    screen = reward.annotator_screening(delta.mean(1), first, ids, alpha=cfg.screen_alpha)
    flagged = {a for a, w in screen["weights"].items() if w < 1.0}
    honest = {a for a in ids if a not in attackers}
    log.record_screenings("annotator_screening", [
        {"target": f"annotator:{g}", "action": e["action"],
         "evidence": {**e, "context": context}}
        for g, e in screen["annotators"].items()])
    stats = {"flagged": sorted(flagged),
             "precision": (len(flagged & set(attackers)) / len(flagged)) if flagged else None,
             "recall": (len(flagged & set(attackers)) / len(attackers)) if attackers else None,
             "honest_flag_rate": len(flagged & honest) / max(len(honest), 1),
             "honest_flagged": len(flagged & honest), "honest": len(honest)}
    weighted = [{**r, "weight": screen["weights"][r["annotator_id"]]} for r in records]
    return weighted, stats


def _screen_examples(delta, records, cfg, changed) -> tuple[list, dict]:
    """Drop the examples every out-of-fold member contradicts; scored against the labels the
    attack changed (a poisoned label that already preferred the worse response, or a coin flip
    that landed right, is not a wrong label to find)."""
    _, first = _pairs_of(records)
    out = reward.example_screening(reward.example_losses(delta, first),
                                   threshold=cfg.example_threshold)
    flagged = set(np.flatnonzero(out["flagged"]).tolist())
    bad = set(changed)
    stats = {"flagged": len(flagged),
             "precision": len(flagged & bad) / len(flagged) if flagged else None,
             "recall": len(flagged & bad) / len(bad) if bad else None}
    return [r for i, r in enumerate(records) if i not in flagged], stats


def _scan(models, learner, records, cfg, seed) -> tuple[list, dict]:
    """Name triggers one at a time: scan the model (`interpret.scan_triggers` over the words of
    the training prompts), drop the comparisons whose prompts carry the word that turns most
    preferences around, retrain and scan again, until no word is named (at most 3 rounds).
    One at a time, because a backdoored model also turns around on ordinary prompt words
    appended where the trigger was; after the trigger's comparisons are gone they no longer
    do, and the honest comparisons carrying them stay."""
    words = candidate_words([r["prompt"] for r in records])
    probe = builtin_pairs(np.random.default_rng([seed, 9]), 200)
    named, kept, first = [], list(records), None
    for round_ in range(3):
        if round_:
            learner = models.fit("plain", kept, cfg, seed)
        scan = scan_triggers(lambda pairs: learner.score_pairs(pairs)[0].mean(1), probe,
                             [w for w in words if w not in named])
        first = first or sorted(scan["words"].items(), key=lambda kv: -kv[1]["flip_rate"])[:3]
        if not scan["triggers"]:
            break
        top = scan["triggers"][0]
        named.append(top)
        kept = [r for r in kept if top not in candidate_words([r["prompt"]], min_count=1)]
    return kept, {"triggers": named, "dropped": len(records) - len(kept), "top": first}


def _cell(cfg, models, honest, kind, rate, seed, log) -> dict:
    """Every defence's reward model on one attack at one rate."""
    acfg = _attack(cfg, kind, rate, seed)
    records, info = poison_records(honest, acfg, gold_fn=GOLD)
    attackers = info["attackers"]
    defences = [d.strip() for d in cfg.defences.split(",") if d.strip()]
    out = {"attackers": attackers, "poisoned": len(info["poisoned"]),
           "changed": len(info["changed"])}
    base = models.fit("plain", records, cfg, seed)
    out["none"] = _measure(base, cfg, seed)
    context = f"seed {seed}, attack {kind}, rate {rate}"
    prepared = {}
    if "trigger_scan" in defences:  # first: the learner is refitted below, `base` with it
        prepared["trigger_scan"] = _scan(models, base, records, cfg, seed)
    if "screening" in defences or "examples" in defences:
        held_out = _out_of_fold(models, records, cfg, seed)
    if "screening" in defences:
        prepared["screening"] = _screen_annotators(held_out, records, cfg, attackers, log,
                                                   context)
    if "examples" in defences:
        prepared["examples"] = _screen_examples(held_out, records, cfg, info["changed"])
    for d in defences:
        if d == "none":
            continue
        if d in prepared:
            data_d, stats = prepared[d]
            out[d] = {**_measure(models.fit("plain", data_d, cfg, seed), cfg, seed), **stats}
        else:
            learner = models.fit("flip" if d == "flip_rate" else "outliers", records, cfg,
                                 seed)
            out[d] = _measure(learner, cfg, seed)
    return out


def _exploit(cfg, models, honest, seed) -> dict:
    """Reward exploits on the clean model and their patching (REFORM-style: find the model's
    failure modes, label them, retrain). The hacking diagnostics' appended-word search
    (`interpret.hacking.word_gains`, as the audit's) ranks joined pleasant+unpleasant words
    such as "greatugly" by the reward they add on one set of responses; the best is the
    exploit, its gain (appended twice, in units of the reward's s.d.) and gold change measured
    on another set. Patching: the words that gain (at most `patch_words`; 0: all) become labelled
    negatives (a response preferred to its edited copy, `patch_negatives` in all), the model
    is retrained for the same number of passes over the original labels, and the exploit's
    gain, the best word's gain and the held-out accuracy are measured again."""
    rng = np.random.default_rng([seed, 11])
    words = [p + u for p in data.builtin.PLEASANT for u in data.builtin.UNPLEASANT]
    pick = [(str(rng.choice(data.builtin.PROMPTS)), data.builtin.random_response(rng, 6))
            for _ in range(100)]
    measure = [(str(rng.choice(data.builtin.PROMPTS)), data.builtin.random_response(rng, 6))
               for _ in range(200)]
    test = builtin_pairs(np.random.default_rng([seed, 7]), cfg.heldout_pairs)
    gold = gold_delta(test)

    def gains(learner, items, candidates):  # in units of the reward's s.d. over `items`
        ps, rs = zip(*items)
        base = _rewards(learner, ps, rs)
        g = word_gains(lambda p, r: _rewards(learner, p, r), ps, rs, candidates,
                       edit=lambda w: repeat_word(w, 2), base=base)
        return g / max(float(base.std()), 1e-9)

    def gold_change(word):
        return float(np.mean([GOLD(p, repeat_word(word, 2)(p, r)) - GOLD(p, r)
                              for p, r in measure]))

    clean = models.fit("plain", honest, cfg, seed)  # the learner is reused: measure it now
    found = gains(clean, pick, words)
    ranked = [int(i) for i in np.argsort(-found) if found[i] > 0] or [int(np.argmax(found))]
    word = words[ranked[0]]
    before = {"gain_before": float(gains(clean, measure, [word])[0]),
              "accuracy_before": clean.accuracy(test, gold)}
    targets = [words[i] for i in ranked[:cfg.patch_words or None]]
    negatives = []
    for j in range(cfg.patch_negatives):
        p = str(rng.choice(data.builtin.PROMPTS))
        r = data.builtin.random_response(rng, 6)
        negatives.append({"prompt": p, "responses": [r, repeat_word(targets[j % len(targets)],
                                                                    2)(p, r)],
                          "ranks": [0, 1], "annotator_id": "patch"})
    steps = int(round(cfg.steps * (len(honest) + len(negatives)) / len(honest)))
    patched = models.fit("plain", honest + negatives, cfg, seed, steps=steps)
    after_all = gains(patched, pick, words)
    best_after = words[int(np.argmax(after_all))]
    return {"word": word, "patched_words": targets, **before,
            "gold_change": gold_change(word),
            "gain_after": float(gains(patched, measure, [word])[0]),
            "accuracy_after": patched.accuracy(test, gold), "best_word_after": best_after,
            "best_gain_after": float(gains(patched, measure, [best_after])[0]),
            "patched_steps": steps}


def robustness(cfg: RobustnessConfig) -> Path:
    """Run every seed × attack × rate × defence (and the exploit patching) and write the
    report; the last line printed is the study's summary."""
    cfg, root = cfg.resolved(), Path(cfg.run_dir)
    start_study(root, cfg)
    tok = study_tokenizer(root)
    models = _Models(cfg, tok)
    log = DecisionLog(root / "decisions.jsonl")
    attacks = [a.strip() for a in cfg.attacks.split(",") if a.strip()]
    rates = float_list(cfg.rates)
    t0 = time.perf_counter()
    results: dict = {"cells": {}, "exploit": {}}
    for seed in int_list(cfg.seeds):
        honest = _honest_labels(cfg, seed)
        for kind in attacks:
            for rate in rates:
                if rate == 0 and kind != attacks[0]:
                    continue  # one clean run per seed, shared by every attack
                key = f"{kind}/{rate:g}/seed{seed}"
                results["cells"][key] = cached_json(
                    root / "runs" / kind / f"rate{rate:g}" / f"seed{seed}.json",
                    lambda: _cell(cfg, models, honest, kind, rate, seed, log))
        results["exploit"][f"seed{seed}"] = cached_json(
            root / "runs" / "exploit" / f"seed{seed}.json",
            lambda: _exploit(cfg, models, honest, seed))
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["config"] = dataclasses.asdict(cfg)
    return write_robustness_report(root, cfg, attacks, rates, results)
