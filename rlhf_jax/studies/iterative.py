"""Iterative preference learning: rounds of sampling from the current policy → labels (a judge,
simulated annotators or people in the labelling app) → the offline stage's DPO on the labels →
optionally a refreshed reward model (Xiong et al. 2024, "Iterative preference learning from
human feedback: bridging theory and practice for RLHF under KL-constraint", Algorithm 1 in its
batch form; OpenRLHF's and RLHFlow's iterative DPO). Online DPO (`stages.online`) is the limit
of one update per sampled batch; rounds sample once, label once and train many steps, which
is what a loop with people in it can afford.

Every round is a directory (`stages.layout.IterativeLayout`) and every phase of a round leaves
a file before the next starts (samples, the pairs sent out, labels, the trained policy, the
refreshed reward model, the round's summary), so a rerun goes on from the first missing one:
after a crash, after more `rounds`, or after people labelled the app's tasks.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from rlhf_jax import data, eval as rl_eval, interpret, models, reward, rlaif, train
from rlhf_jax.labelling.entities import unstorable
from rlhf_jax.labelling.tasks import prompt_record_text
from rlhf_jax.reward.export import HEAD_META
from rlhf_jax.sampling import SamplingConfig, TextSampler
from rlhf_jax.stages.configs.pipeline import _replace
from rlhf_jax.stages.layout import (IterativeLayout, RoundLayout, check_run_config,
                                    config_hash, record_run_config, write_json)
from rlhf_jax.stages.offline import train_offline
from rlhf_jax.stages.pipeline import as_pair_record
from rlhf_jax.stages.reward import train_reward_model
from rlhf_jax.studies.active import top_k_per_prompt
from rlhf_jax.studies.configs.iterative import (CONSTITUTION, REWARD_MODEL,  # noqa: F401
                                                IterativeDPOConfig)
from rlhf_jax.studies.label_sources import app_labels, open_app_store
from rlhf_jax.studies.pairs import SimulatedAnnotators


@dataclasses.dataclass
class IterativeResult:
    """What a run of the rounds leaves: its directory, one summary per finished round, the last
    round's policy export, and whether it stopped to wait for the app's labels."""

    run_dir: str
    history: list
    policy_dir: str
    waiting: bool = False


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


def _check_reward_dir(reward_dir: str) -> None:
    if not Path(reward_dir).is_dir():
        raise models.CheckpointFormatError(
            f"reward_dir={reward_dir!r} does not exist; train one first (the main job "
            "writes runs/pipeline/reward/export)")


class _RewardJudge:
    """The reward model at a directory scoring (prompt, answer) texts as it read them in
    training (`interpret.text.encode`): every head's reward [N, M]; `objectives` names the
    heads of a multi-objective model (empty: one head, or an ensemble's members)."""

    def __init__(self, reward_dir: str, cfg: IterativeDPOConfig):
        _check_reward_dir(reward_dir)
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


def _prompts(cfg: IterativeDPOConfig) -> list:
    """Every prompt the rounds draw from: the file's (text or conversations) or the built-in."""
    if not cfg.prompts_file:
        return list(data.builtin.PROMPTS)
    return [r["prompt"] for r in data.read_records(cfg.prompts_file, "prompt",
                                                   field=cfg.prompts_field)[0]]


def _text_judge(name: str):
    """A text scorer of `eval.TEXT_TERMS` on (prompt, answer); conversations read as text."""
    fn = rl_eval.TEXT_TERMS[name]
    return lambda prompt, answer: float(fn(data.prompt_text(prompt), answer))


def _sample(cfg: IterativeDPOConfig, r: int, policy_dir: str, pool: list) -> list[dict]:
    """Round r's prompts (drawn without replacement when the pool holds enough of them, else
    all with replacement) and each one's K answers from the policy at `policy_dir` (key
    fold_in(seed, r))."""
    rng = np.random.default_rng([cfg.seed, r, 1])
    n = cfg.prompts_per_round
    idx = rng.permutation(len(pool))[:n] if n <= len(pool) else rng.integers(len(pool), size=n)
    prompts = [pool[int(i)] for i in idx]
    config, params = models.load_hf_checkpoint(policy_dir)
    tok = data.use_template(models.load_tokenizer(policy_dir, config), cfg.chat_template)
    sampler = TextSampler.from_params(
        config, params, tok, max_len=cfg.max_prompt_len, batch_size=64,
        sampling=SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature))
    k = cfg.samples_per_prompt
    answers, ended = sampler.sample([p for p in prompts for _ in range(k)],
                                    jax.random.fold_in(jax.random.key(cfg.seed), r))
    return [{"prompt": p, "responses": answers[i * k:(i + 1) * k],
             "ended": ended[i * k:(i + 1) * k]} for i, p in enumerate(prompts)]


def _chosen_rejected(rec: dict) -> tuple:
    """(chosen, rejected) of a pairwise record in the common form (responses, ranks)."""
    return rec["responses"][rec["ranks"].index(0)], rec["responses"][rec["ranks"].index(1)]


def _pair_record(prompt, chosen: str, rejected: str, annotator: str) -> dict:
    return as_pair_record({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                           "annotator_id": annotator})


def _constitution_judge(cfg: IterativeDPOConfig):
    """judge=constitution: the AI judge of `cfg.constitution` (its LM judge at
    `judge_model_dir`); a malformed constitution or a missing LM judge stops by name."""
    try:
        return rlaif.constitution_judge(cfg.constitution, cfg.judge_model_dir, seed=cfg.seed)
    except ValueError as e:
        raise train.ConfigError(str(e)) from None


def _judge_labels(cfg, samples: list[dict], rm: Optional[_RewardJudge],
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
        ai = ai or _constitution_judge(cfg)
        flat = rlaif.round_robin_scores(ai, [data.prompt_text(p) for p in flat_p], flat_a, k,
                                        seed=cfg.seed).astype(np.float64)
    else:
        judge = _text_judge(cfg.judge)
        flat = np.array([judge(p, a) for p, a in zip(flat_p, flat_a)], np.float64)
    scores = [flat[i * k:(i + 1) * k].tolist() for i in range(len(samples))]
    for s, sc in zip(samples, scores):
        s["scores"] = sc
    picks = best_vs_worst(scores, texts, [s.get("ended") or [True] * len(s["responses"])
                                          for s in samples])
    records = [_pair_record(s["prompt"], s["responses"][b], s["responses"][w], cfg.judge)
               for s, pick in zip(samples, picks) if pick for b, w in [pick]]
    gaps = [sc[b] - sc[w] for sc, pick in zip(scores, picks) if pick for b, w in [pick]]
    return records, {"judge_calls": calls, "human_labels": 0,
                     "judge_score_mean": float(np.mean(flat)),
                     "chosen_minus_rejected": float(np.mean(gaps)) if gaps else 0.0,
                     "prompts_without_pair": picks.count(None)}


def _people_pairs(cfg, r: int, samples: list[dict], rm: Optional[_RewardJudge]) -> tuple:
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


def _people_labels(cfg, r: int, pairs: list[tuple], tag: str):
    """Records of `pairs` labelled by the simulated annotators or the app (None: waiting)."""
    if cfg.labels == "simulated":
        sim = SimulatedAnnotators(cfg.temperatures, gold_fn=_text_judge(cfg.judge))
        out = sim.label(pairs, np.random.default_rng([cfg.seed, r, 3]))
    else:  # the app stores a conversation as its JSON text
        stored = [(prompt_record_text(p), a, b) for p, a, b in pairs]
        out = app_labels(cfg, stored, tag, source="iterative_dpo")
        if out is None:
            return None
        original = {prompt_record_text(p): p for p, _, _ in pairs}
        out = [{**rec, "prompt": original[rec["prompt"]]} for rec in out]
    return [_pair_record(rec["prompt"], *_chosen_rejected(rec), rec["annotator_id"])
            for rec in out]


def _agreement(rm: Optional[_RewardJudge], records: list[dict]) -> float:
    """How often the reward model orders the round's labelled pairs as their labels do: its
    accuracy on fresh samples of the current policy (None without a reward model)."""
    if rm is None or not records:
        return None
    prompts = [rec["prompt"] for rec in records]
    text = lambda x: x if isinstance(x, str) else data.response_text(x)  # noqa: E731
    chosen = rm.members(prompts, [text(rec["chosen"]) for rec in records]).mean(1)
    rejected = rm.members(prompts, [text(rec["rejected"]) for rec in records]).mean(1)
    return float(np.mean(chosen > rejected))


def app_tag(root, config_dict: dict) -> str:
    """The prefix of a run's task ids in the labelling app: its directory and its config, less
    the settings a resumed run may change (`stages.layout.RESUME_SAFE_KEYS`: steps, logging,
    compile cache...), so that people's labels stay the run's when it goes on."""
    key = json.dumps([str(Path(root).resolve()), config_hash(config_dict)])
    return "it-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _check_positions(cfg: IterativeDPOConfig, config) -> None:
    """A GPT-2 policy has no position beyond its learned ones: the prompt and the longer of the
    sampled answer and the answer the stages read must fit them (named by their settings)."""
    answer = max(cfg.max_new_tokens, cfg.response_len)
    if config.is_gpt2 and cfg.max_prompt_len + answer > config.max_position_embeddings:
        raise train.ConfigError(
            f"max_prompt_len={cfg.max_prompt_len} + {answer} answer tokens (max_new_tokens="
            f"{cfg.max_new_tokens}, max_response_len={cfg.response_len} with the end of turn) "
            f"exceed the policy's {config.max_position_embeddings} learned positions "
            f"(max_position_embeddings of {cfg.policy_dir}): lower them")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _train_round(cfg: IterativeDPOConfig, r: int, rl: RoundLayout, policy_dir: str):
    """The offline stage from the round's starting policy on the round's training file."""
    off = _replace(cfg.offline, {
        "run_dir": str(rl.stage("offline").root), "seed": cfg.seed * 1000 + r,
        "policy_dir": policy_dir, "chat_template": cfg.chat_template,
        "reference_dir": cfg.policy_dir if cfg.reference == "initial" and r > 0 else "",
        "data.train_file": str(rl.train_file), "data.max_prompt_len": cfg.max_prompt_len,
        "data.max_response_len": cfg.response_len})
    return train_offline(off)


def _refresh(cfg: IterativeDPOConfig, r: int, rl: RoundLayout, labelled: list[dict]):
    """A reward model trained on `reward_file` and every label so far, from `policy_dir`."""
    extra = data.read_records(cfg.reward_file, "pairwise")[0] if cfg.reward_file else []
    data.builtin.write_jsonl(rl.reward_file, [
        *({"prompt": x["prompt"], **dict(zip(("chosen", "rejected"), _chosen_rejected(x)))}
          for x in extra), *labelled])
    rcfg = _replace(cfg.reward, {
        "run_dir": str(rl.stage("reward").root), "seed": cfg.seed * 1000 + r,
        "model_dir": cfg.policy_dir, "chat_template": cfg.chat_template,
        "data.train_file": str(rl.reward_file), "data.max_prompt_len": cfg.max_prompt_len,
        "data.max_response_len": cfg.response_len})
    return train_reward_model(rcfg)


def iterative_dpo(cfg: IterativeDPOConfig, *, verbose: bool = True) -> IterativeResult:
    """Run (or go on with) the rounds of `cfg`; see the module docstring. Each finished round's
    summary holds: the samples drawn and judge (or reward-model) calls spent, the pairs
    labelled, the judge's mean score of the samples and its best − worst gap (labels=judge), the
    reward model's agreement with the round's fresh labels (`rm_fresh_accuracy`: how well the
    reward model in use reads the current policy's answers), the offline stage's last loss and
    implicit-reward accuracy, and the seconds the round took."""
    layout = IterativeLayout(cfg.run_dir)
    if not Path(cfg.policy_dir).is_dir():
        raise models.CheckpointFormatError(
            f"policy_dir={cfg.policy_dir!r} does not exist: iterative DPO starts from a trained "
            "policy (`python experiments/rlhf_pipeline.py` writes runs/pipeline/sft/export)")
    # every input read before the run directory records a config, so a fixed command starts
    # there: a model whose positions hold the rounds' sequences, its tokenizer and template,
    # the prompts, the first round's reward model, the judge and the app's database
    config = models.load_hf_config(cfg.policy_dir)
    _check_positions(cfg, config)
    data.use_template(models.load_tokenizer(cfg.policy_dir, config), cfg.chat_template)
    pool = _prompts(cfg)
    needed = (cfg.labels == "judge" and cfg.judge == REWARD_MODEL) or cfg.acquisition
    if needed and not layout.round(0).summary.is_file():
        _check_reward_dir(cfg.reward_dir)
    ai = _constitution_judge(cfg) if cfg.labels == "judge" and cfg.judge == CONSTITUTION \
        else None
    if cfg.labels == "app":
        open_app_store(cfg).close()
    config_dict = train.config_to_dict(cfg)
    config_dict.pop("rounds")  # more rounds go on with the same run
    layout.root.mkdir(parents=True, exist_ok=True)
    # fields added since a run started keep their defaults
    check_run_config(layout.config, config_dict,
                     defaults=train.config_to_dict(IterativeDPOConfig()))
    record_run_config(layout.config, config_dict)
    tag = app_tag(layout.root, config_dict)
    policy, reward_dir, history, labelled = cfg.policy_dir, cfg.reward_dir, [], []
    for r in range(cfg.rounds):
        rl = layout.round(r)
        if rl.summary.is_file():  # done: its policy and reward model are the next round's start
            row = json.loads(rl.summary.read_text())
            history.append(row)
            labelled += _read_jsonl(rl.labels)
            policy, reward_dir = row["policy_dir"], row["reward_dir"]
            continue
        start = time.perf_counter()
        # the reward model judges, acquires, or (when there is one) is measured on fresh labels
        rm = _RewardJudge(reward_dir, cfg) if needed or (
            reward_dir and Path(reward_dir).is_dir()) else None
        rl.root.mkdir(parents=True, exist_ok=True)
        if rl.samples.is_file():
            samples = _read_jsonl(rl.samples)
        else:
            samples = _sample(cfg, r, policy, pool)
            data.builtin.write_jsonl(rl.samples, samples)
        ends = [e for s in samples for e in s.get("ended", ())]
        row = {"round": r, "samples": sum(len(s["responses"]) for s in samples),
               "eos_fraction": float(np.mean(ends)) if ends else None, "policy_start": policy}
        if rl.labels.is_file():
            new = _read_jsonl(rl.labels)
            row.update(json.loads(rl.pairs.read_text())["stats"])
        elif cfg.labels == "judge":
            new, stats = _judge_labels(cfg, samples, rm, ai)
            row.update(stats)
            write_json(rl.pairs, {"stats": stats})
        else:
            if rl.pairs.is_file():
                sent = json.loads(rl.pairs.read_text())
            else:
                pairs, calls = _people_pairs(cfg, r, samples, rm)
                sent = {"pairs": [list(p) for p in pairs], "stats": {"judge_calls": calls}}
                write_json(rl.pairs, sent)
            new = _people_labels(cfg, r, [tuple(p) for p in sent["pairs"]], f"{tag}-r{r}")
            if new is None:
                if verbose:
                    print(f"round {r}: waiting for labels of {len(sent['pairs'])} pairs in "
                          f"{cfg.app_db}; rerun when they are labelled", flush=True)
                return IterativeResult(str(layout.root), history, policy, waiting=True)
            row.update(sent["stats"])
        data.builtin.write_jsonl(rl.samples, samples)
        data.builtin.write_jsonl(rl.labels, new)
        if cfg.labels != "judge":
            row["human_labels"] = len(new)
        row.update(pairs=len(new), labels_so_far=len(labelled) + len(new),
                   # the reward model's labels say nothing of its accuracy
                   rm_fresh_accuracy=_agreement(None if cfg.labels == "judge" and
                                                cfg.judge == REWARD_MODEL else rm, new))
        if not new:
            raise train.ConfigError(
                f"round {r}: no pair to learn from (every prompt's answers tie or are empty); "
                "raise samples_per_prompt or temperature, or check the judge")
        labelled += new
        data.builtin.write_jsonl(rl.train_file, labelled if cfg.train_on == "all" else new)
        result = _train_round(cfg, r, rl, policy)
        if result.preempted:
            return IterativeResult(str(layout.root), history, policy)
        metrics = [m for m in rl.stage("offline").read_metrics() if "train/loss" in m]
        last = metrics[-1] if metrics else {}
        row.update(train_loss=last.get("train/loss"), train_accuracy=last.get("rewards/accuracy"))
        policy = result.export_dir
        if cfg.refresh_reward:
            refreshed = _refresh(cfg, r, rl, labelled)
            if refreshed.preempted:
                return IterativeResult(str(layout.root), history, policy)
            reward_dir = refreshed.export_dir
        row.update(policy_dir=policy, reward_dir=reward_dir,
                   seconds=time.perf_counter() - start)
        write_json(rl.summary, row)
        history.append(row)
        if verbose:
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("_dir")
                              and k != "policy_start"}), flush=True)
    data.builtin.write_jsonl(layout.history, history)
    return IterativeResult(str(layout.root), history, policy)
