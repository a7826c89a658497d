"""Where a round of iterative DPO gets its pairs and labels: a judge scoring every answer (the
reward model, a constitution's AI judge comparing every pair, or a text scorer) and each prompt's
best answer against its worst; or pairs chosen for people (the first two distinct answers, or
by an acquisition function of the reward model's members) and labelled by simulated annotators
or in the labelling app; and the reward model's agreement with the labels."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from rlhf_jax import data, eval as rl_eval, interpret, models, reward, rlaif, train
from rlhf_jax.labelling.entities import unstorable
from rlhf_jax.labelling.tasks import prompt_record_text
from rlhf_jax.reward.export import HEAD_META
from rlhf_jax.stages.pipeline import as_pair_record
from rlhf_jax.studies.active import top_k_per_prompt
from rlhf_jax.studies.configs.iterative import CONSTITUTION, REWARD_MODEL, IterativeDPOConfig
from rlhf_jax.studies.label_sources import app_labels
from rlhf_jax.studies.pairs import SimulatedAnnotators


def best_vs_worst(scores, texts, ended=None) -> list[tuple[int, int]]:
    """Each prompt's (best, worst) answer by the judge's `scores` [P][K] (first of equals),
    or None where they tie or the two texts are the same; `texts` [P][K] are the answers.
    Empty answers take no part (there is no text to learn from). With `ended` [P][K] (the
    answer ended with an end token), an answer cut at the length limit ranks below every answer
    that ended, whatever its score, as in online DPO (`offline.judged_ranks`)."""
    out = []
    for p, (s, t) in enumerate(zip(scores, texts)):
        e = ended[p] if ended is not None else [True] * len(t)
        ok = [i for i in range(len(t)) if t[i].strip()]
        if len(ok) < 2:
            out.append(None)
            continue
        best = max(ok, key=lambda i: (bool(e[i]), s[i], -i))
        worst = min(ok, key=lambda i: (bool(e[i]), s[i], i))
        same = (bool(e[best]), s[best]) == (bool(e[worst]), s[worst])
        out.append(None if same or t[best] == t[worst] else (best, worst))
    return out


def candidate_pairs(texts) -> list[tuple[int, int, int]]:
    """(prompt index, i, j) for every pair i < j of distinct non-empty answers of a prompt."""
    out = []
    for p, t in enumerate(texts):
        seen = {}
        for i, a in enumerate(t):
            if a.strip() and a not in seen:
                seen[a] = i
        idx = sorted(seen.values())
        out += [(p, i, j) for n, i in enumerate(idx) for j in idx[n + 1:]]
    return out


def check_reward_dir(reward_dir: str) -> None:
    if not Path(reward_dir).is_dir():
        raise models.CheckpointFormatError(
            f"reward_dir={reward_dir!r} does not exist; train one first (the main job "
            "writes runs/pipeline/reward/export)")


class RewardJudge:
    """The reward model at a directory scoring (prompt, answer) texts as it read them in
    training (`interpret.text.encode`): every head's reward [N, M]; `objectives` names the
    heads of a multi-objective model (empty: one head, or an ensemble's members)."""

    def __init__(self, reward_dir: str, cfg: IterativeDPOConfig):
        check_reward_dir(reward_dir)
        self.path = reward_dir
        self.rm = interpret.text.load(reward_dir, max_prompt_len=cfg.max_prompt_len,
                                      max_response_len=cfg.response_len)
        meta = json.loads((Path(reward_dir) / HEAD_META).read_text())
        self.objectives = tuple(meta.get("objectives", ()))

    def members(self, prompts, answers) -> np.ndarray:
        if not prompts:
            return np.zeros((0, self.rm.num_outputs), np.float32)
        enc = interpret.text.encode(self.rm, prompts, answers)
        return interpret.text.member_rewards(self.rm, enc)


def text_judge(name: str):
    """A text scorer of `eval.TEXT_TERMS` on (prompt, answer); conversations read as text."""
    fn = rl_eval.TEXT_TERMS[name]
    return lambda prompt, answer: float(fn(data.prompt_text(prompt), answer))


def chosen_rejected(rec: dict) -> tuple:
    """(chosen, rejected) of a pairwise record in the common form (responses, ranks)."""
    return rec["responses"][rec["ranks"].index(0)], rec["responses"][rec["ranks"].index(1)]


def pair_record(prompt, chosen: str, rejected: str, annotator: str) -> dict:
    return as_pair_record({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                           "annotator_id": annotator})


def constitution_judge(cfg: IterativeDPOConfig):
    """judge=constitution: the AI judge of `cfg.constitution` (its LM judge at
    `judge_model_dir`); a malformed constitution or a missing LM judge stops by name."""
    try:
        return rlaif.constitution_judge(cfg.constitution, cfg.judge_model_dir, seed=cfg.seed)
    except ValueError as e:
        raise train.ConfigError(str(e)) from None


def judge_labels(cfg, samples: list[dict], rm: Optional[RewardJudge],
                  ai=None) -> tuple[list, dict]:
    """labels=judge: every answer scored, each prompt's best against its worst (`ai`: the
    constitution's judge, reseeded by every call of `rlaif.round_robin_scores`)."""
    texts = [s["responses"] for s in samples]
    flat_p = [s["prompt"] for s in samples for _ in s["responses"]]
    flat_a = [a for t in texts for a in t]
    k, calls = cfg.samples_per_prompt, len(flat_a)
    if cfg.judge == REWARD_MODEL:
        flat = rm.members(flat_p, flat_a).mean(axis=1)
    elif cfg.judge == CONSTITUTION:  # one call per pair of a prompt's answers
        calls = len(samples) * k * (k - 1) // 2
        ai = ai or constitution_judge(cfg)
        flat = rlaif.round_robin_scores(ai, [data.prompt_text(p) for p in flat_p], flat_a, k,
                                        seed=cfg.seed).astype(np.float64)
    else:
        judge = text_judge(cfg.judge)
        flat = np.array([judge(p, a) for p, a in zip(flat_p, flat_a)], np.float64)
    scores = [flat[i * k:(i + 1) * k].tolist() for i in range(len(samples))]
    for s, sc in zip(samples, scores):
        s["scores"] = sc
    picks = best_vs_worst(scores, texts, [s.get("ended") or [True] * len(s["responses"])
                                          for s in samples])
    records = [pair_record(s["prompt"], s["responses"][b], s["responses"][w], cfg.judge)
               for s, pick in zip(samples, picks) if pick for b, w in [pick]]
    gaps = [sc[b] - sc[w] for sc, pick in zip(scores, picks) if pick for b, w in [pick]]
    return records, {"judge_calls": calls, "human_labels": 0,
                     "judge_score_mean": float(np.mean(flat)),
                     "chosen_minus_rejected": float(np.mean(gaps)) if gaps else 0.0,
                     "prompts_without_pair": picks.count(None)}


def people_pairs(cfg, r: int, samples: list[dict], rm: Optional[RewardJudge]) -> tuple:
    """labels simulated | app: the pairs to label (prompt, first shown, second shown) and the
    reward-model calls spent choosing them. Without acquisition each prompt's first two distinct
    answers (for the app, answers a database can store); with it the `labels_per_round` best
    candidates by the acquisition function of the reward model's members, at most one per
    prompt until every prompt with a candidate has one, then the best of the rest
    (`studies.active.top_k_per_prompt`)."""
    texts = [s["responses"] for s in samples]
    cands = candidate_pairs(texts)
    if cfg.labels == "app":  # answers no database stores (a NUL character) cannot be shown
        cands = [(p, i, j) for p, i, j in cands
                 if not (unstorable(texts[p][i]) or unstorable(texts[p][j]))]
    if not cfg.acquisition:
        first = {}
        for c in cands:
            first.setdefault(c[0], c)
        chosen = [first[p] for p in sorted(first)]
        return [(samples[p]["prompt"], texts[p][i], texts[p][j]) for p, i, j in chosen], 0
    if (rm.rm.num_outputs < 2 or rm.objectives) and cfg.acquisition in ("disagreement",
                                                                         "bald"):
        heads = (f"heads for the objectives {list(rm.objectives)}, whose disagreement is no "
                 "uncertainty" if rm.objectives else "one head")
        raise train.ConfigError(f"acquisition={cfg.acquisition}: the reward model at "
                                f"{rm.path} has {heads}; it needs an ensemble "
                                "(reward.num_reward_outputs >= 2)")
    prompts = [samples[p]["prompt"] for p, _, _ in cands]
    a = [texts[p][i] for p, i, _ in cands]
    b = [texts[p][j] for p, _, j in cands]
    members = rm.members(prompts + prompts, a + b)
    delta = members[:len(cands)] - members[len(cands):]
    key = jax.random.key(int(np.random.default_rng([cfg.seed, r, 2]).integers(2**31)))
    scores = reward.acquisition.acquisition_scores(cfg.acquisition, delta, key)
    k = min(cfg.labels_per_round or len(samples), len(cands))
    idx = top_k_per_prompt(scores, [p for p, _, _ in cands], k, 1)
    return [(prompts[i], a[i], b[i]) for i in np.asarray(idx)], 2 * len(cands)


def people_labels(cfg, r: int, pairs: list[tuple], tag: str):
    """Records of `pairs` labelled by the simulated annotators or the app (None: waiting)."""
    if cfg.labels == "simulated":
        sim = SimulatedAnnotators(cfg.temperatures, gold_fn=text_judge(cfg.judge))
        out = sim.label(pairs, np.random.default_rng([cfg.seed, r, 3]))
    else:  # the app stores a conversation as its JSON text
        stored = [(prompt_record_text(p), a, b) for p, a, b in pairs]
        out = app_labels(cfg, stored, tag, source="iterative_dpo")
        if out is None:
            return None
        original = {prompt_record_text(p): p for p, _, _ in pairs}
        out = [{**rec, "prompt": original[rec["prompt"]]} for rec in out]
    return [pair_record(rec["prompt"], *chosen_rejected(rec), rec["annotator_id"])
            for rec in out]


def agreement(rm: Optional[RewardJudge], records: list[dict]) -> float:
    """How often the reward model orders the round's labelled pairs as their labels do: its
    accuracy on fresh samples of the current policy (None without a reward model)."""
    if rm is None or not records:
        return None
    prompts = [rec["prompt"] for rec in records]
    text = lambda x: x if isinstance(x, str) else data.response_text(x)  # noqa: E731
    chosen = rm.members(prompts, [text(rec["chosen"]) for rec in records]).mean(1)
    rejected = rm.members(prompts, [text(rec["rejected"]) for rec in records]).mean(1)
    return float(np.mean(chosen > rejected))
