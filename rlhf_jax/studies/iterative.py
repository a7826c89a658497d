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
after a crash, after more `rounds`, or after people labelled the app's tasks. Where a round's
pairs and labels come from is `studies.iterative_labels`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import jax
import numpy as np

from rlhf_jax import data, models, train
from rlhf_jax.sampling import SamplingConfig, TextSampler
from rlhf_jax.stages.configs.pipeline import _replace
from rlhf_jax.stages.layout import (IterativeLayout, RoundLayout, check_run_config,
                                    config_hash, record_run_config, write_json)
from rlhf_jax.stages.offline import train_offline
from rlhf_jax.stages.reward import train_reward_model
from rlhf_jax.studies.configs.iterative import (CONSTITUTION, REWARD_MODEL,  # noqa: F401
                                                IterativeDPOConfig)
from rlhf_jax.studies.iterative_labels import (  # noqa: F401 - the pure pieces, for users
    RewardJudge, agreement, best_vs_worst, candidate_pairs, check_reward_dir, chosen_rejected,
    constitution_judge, judge_labels, people_labels, people_pairs)
from rlhf_jax.studies.label_sources import open_app_store


@dataclasses.dataclass
class IterativeResult:
    """What a run of the rounds leaves: its directory, one summary per finished round, the last
    round's policy export, and whether it stopped to wait for the app's labels."""

    run_dir: str
    history: list
    policy_dir: str
    waiting: bool = False


def _prompts(cfg: IterativeDPOConfig) -> list:
    """Every prompt the rounds draw from: the file's (text or conversations) or the built-in."""
    if not cfg.prompts_file:
        return list(data.builtin.PROMPTS)
    return [r["prompt"] for r in data.read_records(cfg.prompts_file, "prompt",
                                                   field=cfg.prompts_field)[0]]


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
        *({"prompt": x["prompt"], **dict(zip(("chosen", "rejected"), chosen_rejected(x)))}
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
        check_reward_dir(cfg.reward_dir)
    ai = constitution_judge(cfg) if cfg.labels == "judge" and cfg.judge == CONSTITUTION \
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
        rm = RewardJudge(reward_dir, cfg) if needed or (
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
            new, stats = judge_labels(cfg, samples, rm, ai)
            row.update(stats)
            write_json(rl.pairs, {"stats": stats})
        else:
            if rl.pairs.is_file():
                sent = json.loads(rl.pairs.read_text())
            else:
                pairs, calls = people_pairs(cfg, r, samples, rm)
                sent = {"pairs": [list(p) for p in pairs], "stats": {"judge_calls": calls}}
                write_json(rl.pairs, sent)
            new = people_labels(cfg, r, [tuple(p) for p in sent["pairs"]], f"{tag}-r{r}")
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
                   rm_fresh_accuracy=agreement(None if cfg.labels == "judge" and
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
