"""The end-to-end RLHF run as a library function: SFT → comparisons → reward model → PPO (or
another policy method) → evaluation and report (`run_pipeline(PipelineConfig(...))`)."""
from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from typing import Optional

import jax
import numpy as np

from rlhf_jax import data, eval as rl_eval, models, offline, reward, rlaif, train
from rlhf_jax.sampling import generate
from rlhf_jax.stages.common import check_writable
from rlhf_jax.stages.configs.pipeline import (_PIPELINE_OWNED, METHODS, PPO_FAMILY,  # noqa: F401
                                              STAGES, PipelineConfig, _get, _replace)
from rlhf_jax.stages.offline import train_offline
from rlhf_jax.stages.online import train_online_dpo
from rlhf_jax.stages.layout import PipelineLayout, check_run_config, record_run_config
from rlhf_jax.stages.ppo import PPOStageConfig, resolve_sampling, train_ppo
from rlhf_jax.stages.reward import train_reward_model
from rlhf_jax.stages.scoring import cost_term, reward_scorer
from rlhf_jax.stages.sft import train_sft


@dataclasses.dataclass(frozen=True)
class PipelineResult:
    """The headline numbers of a finished run (means with standard errors), or the stage that
    was preempted (then rerun the same command to resume)."""

    run_dir: str
    report: Optional[str] = None
    gold_before: Optional[dict] = None
    gold_after: Optional[dict] = None
    proxy_before: Optional[dict] = None
    proxy_after: Optional[dict] = None
    kl_after: Optional[dict] = None
    seconds: float = 0.0
    preempted_stage: Optional[str] = None


def _prompt_texts(cfg: PipelineConfig, n: int) -> list:
    """`n` prompts (text or message lists), the prompt file's cycled, or the built-in ones."""
    texts = ([r["prompt"] for r in data.read_records(cfg.prompts_file, "prompt",
                                                     field=cfg.prompts_field)[0]]
             if cfg.prompts_file else data.builtin.PROMPTS)
    return [texts[i % len(texts)] for i in range(n)]


def _encode(tokenizer, texts, length: int) -> dict:
    """Prompts left-padded to the rung of `length`'s ladder that holds the longest of them."""
    counts = {"prompts_truncated": 0}
    rows = np.stack([data.preference.encode_prompt(tokenizer, t, length, counts) for t in texts])
    longest = int((rows != data.preference.PAD).sum(1).max())
    rows = rows[:, length - int(data.buckets.rung_of(longest, data.ladder(length))):]
    return data.prompt_arrays(rows, tokenizer.pad_token_id or 0)


def as_pair_record(record: dict) -> dict:
    """A labelled pair whose prompt is a conversation, with its responses as assistant turns."""
    if isinstance(record["prompt"], str):
        return record
    turn = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    return {**record, "chosen": turn(record["chosen"]), "rejected": turn(record["rejected"])}


def sample_comparisons(cfg: PipelineConfig, ppo_cfg: PPOStageConfig, policy_dir: str, gold_fn,
                       path) -> dict:
    """Pairs of policy samples for each prompt (sampled as PPO will sample), labelled by the
    simulated annotators (judging by `cfg.annotator_judge`, else `gold_fn`), written to `path`
    as pairwise JSONL; returns the count and how often the gold judge agrees with the labels.
    Pairs with an empty response are left out (and counted): there is no text to judge."""
    config, params = models.load_hf_checkpoint(policy_dir)
    tok = data.use_template(models.load_tokenizer(policy_dir, config), cfg.chat_template)
    sampling = resolve_sampling(tok, ppo_cfg)
    pairs, key, all_texts = [], jax.random.key(cfg.seed + 100), _prompt_texts(cfg, cfg.comparisons)
    empty = 0
    for chunk in range(0, cfg.comparisons, 250):
        texts = all_texts[chunk:chunk + 250]
        batch = _encode(tok, [t for t in texts for _ in (0, 1)], cfg.prompt_len)
        out = generate(params, batch["tokens"], batch["mask"], jax.random.fold_in(key, chunk),
                       config=config, sampling=sampling)
        toks, mask = jax.device_get((out.tokens, out.mask))
        resp = [tok.decode(t[m > 0], skip_special_tokens=True) for t, m in zip(toks, mask)]
        for p, a, b in zip(texts, resp[0::2], resp[1::2]):
            if not (a.strip() and b.strip()):  # nothing to judge (the data check refuses it)
                empty += 1
            elif a != b:
                pairs.append((p, a, b))
    temps = tuple(float(t) for t in cfg.annotator_temperatures.split(","))
    judge = rl_eval.TEXT_TERMS[cfg.annotator_judge] if cfg.annotator_judge else gold_fn
    # judges read a conversation's plain rendering; the records keep the conversation
    as_text = [(data.prompt_text(p), a, b) for p, a, b in pairs]
    humans = data.builtin.simulate_annotators(as_text, judge, temperatures=temps, seed=cfg.seed)
    extra = {}
    if cfg.feedback == "ai":  # AI labels; the simulated humans' labels are the yardstick
        records = rlaif.ai_label(rlaif.constitution_judge(cfg.constitution, cfg.judge_model_dir,
                                                          seed=cfg.seed), as_text)
        extra["ai_human_agreement"] = float(np.mean(
            [r["chosen"] == h["chosen"] for r, h in zip(records, humans)]))
        extra["ai_labels_by_principle"] = dict(Counter(r["annotator_id"] for r in records))
    else:
        records = humans
    agree = [np.sign(gold_fn(r["prompt"], r["chosen"]) - gold_fn(r["prompt"], r["rejected"]))
             for r in records]  # how often the judge itself sides with the label (ties: half)
    records = [as_pair_record({**r, "prompt": p}) for r, (p, _, _) in zip(records, pairs)]
    train.on_main_process(data.builtin.write_jsonl, path, records)
    return {"comparisons": len(records), "pairs_with_an_empty_response": empty,
            "feedback": cfg.feedback, **extra,
            "gold_label_agreement": float(np.mean(
                [1.0 if a > 0 else 0.5 if a == 0 else 0.0 for a in agree]))}


def evaluate_before_after(cfg: PipelineConfig, ppo_cfg: PPOStageConfig,
                          policy_dir: Optional[str], gold_fn) -> dict:
    """The alignment metrics (`eval.evaluate_policy`: gold, proxy, KL, profanity rate,
    distinct-1/2, length) of the reference (the policy training started from) and the trained
    policy at `policy_dir` on the same prompts, sampled and scored as in PPO (`ppo_cfg`); with
    `policy_dir=None`, "after" is best-of-`cfg.best_of_n` reranking of the reference, constrained
    when `ppo.constraint.cost` is set (each chosen response's cost at most its limit where a
    candidate allows it: `eval.evaluate_best_of_n`). The
    "after" summary adds the win rate against the reference judged by gold (`eval.win_rate`,
    pairing rows prompt by prompt) on a second, independent sample of the reference: "before"
    and "after" share their random numbers (common random numbers, which make the gold and KL
    difference less noisy), and responses coupled that way tie far more often than independent
    draws, so a win rate over them would not be the usual one."""
    config, ref = models.load_hf_checkpoint(ppo_cfg.policy_dir)
    rm_config, rm_params, rm_meta = reward.load_reward_model(ppo_cfg.reward_dir)
    tok = data.use_template(models.load_tokenizer(ppo_cfg.policy_dir, config),
                            cfg.chat_template)
    texts = _prompt_texts(cfg, cfg.eval_samples)
    prompts = _encode(tok, texts, cfg.prompt_len)
    proxy = reward_scorer(rm_config, rm_meta["num_outputs"], rm_meta.get("objectives", ()),
                          ppo_cfg.reward_std_coef, ppo_cfg.objective_weights)
    kw = dict(sampling=resolve_sampling(tok, ppo_cfg), tokenizer=tok, gold_fn=gold_fn,
              proxy_fn=proxy, proxy_params=rm_params, prompt_texts=texts)
    key = jax.random.key(cfg.seed + 200)
    out = {"before": rl_eval.evaluate_policy(ref, ref, config, prompts, key, **kw)}
    if policy_dir is None:
        cost = cost_term(ppo_cfg, tok, rm_config, rm_meta["num_outputs"],
                         rm_meta.get("objectives", ()), rm_params)
        out["after"] = rl_eval.evaluate_best_of_n(
            ref, config, prompts, key, n=cfg.best_of_n, cost_fn=cost and cost.fn,
            cost_limit=ppo_cfg.constraint.limit, **kw)
    else:
        _, after = models.load_hf_checkpoint(policy_dir)
        out["after"] = rl_eval.evaluate_policy(after, ref, config, prompts, key, **kw)
    rivals = rl_eval.evaluate_policy(ref, ref, config, prompts, jax.random.fold_in(key, 7919),
                                     **kw)  # 7919: no chunk start of evaluate_best_of_n
    out["after"]["summary"]["win_rate"] = rl_eval.win_rate(out["after"]["rows"], rivals["rows"])
    return out


def check_inputs(cfg: PipelineConfig) -> None:
    """Validate every user input of the run before any stage starts, so that a bad file or
    directory fails in seconds rather than after minutes of training: the policy directory
    (config and tokenizer), the preference, prompt and SFT files (every record, as the stages
    will read them), and that the run directory can be written."""
    if cfg.chat_template:
        data.read_template(cfg.chat_template)
    if cfg.policy_dir:
        models.load_tokenizer(cfg.policy_dir, models.load_hf_config(cfg.policy_dir))
    if cfg.feedback == "ai" and not cfg.preference_file:
        cons = rlaif.load_constitution(cfg.constitution or rlaif.DEFAULT_CONSTITUTION,
                                       known_judges=rlaif.CLASSIFIERS)
        if any(p.judge == "lm" for p in cons.principles):
            if not cfg.judge_model_dir:
                raise train.ConfigError("constitution: a principle is judged by 'lm': set "
                                        "judge_model_dir")
            models.load_tokenizer(cfg.judge_model_dir,
                                  models.load_hf_config(cfg.judge_model_dir))
    rd = cfg.reward.data
    for path, kind, on_error, field in (
            (cfg.preference_file, rd.kind, rd.on_error, None),
            (cfg.prompts_file, "prompt", cfg.ppo.prompts.on_error, cfg.prompts_field),
            (cfg.sft_file, "text", cfg.sft.data.on_error, None)):
        if path:
            data.read_records(path, kind, on_error=on_error,
                              rating_range=(rd.rating_low, rd.rating_high), field=field)
    check_writable(cfg.run_dir)


def stage_configs(cfg: PipelineConfig, layout: PipelineLayout, policy_dir: str, prefs: str):
    """The SFT, reward, PPO, online DPO and offline configs (`STAGES`) with the pipeline's
    directories, seed and inputs: exactly the fields of `_PIPELINE_OWNED`, which the config
    refuses to have set otherwise."""
    rd = cfg.reward.data
    common = {"seed": cfg.seed, "allow_config_change": cfg.allow_config_change,
              "compile_cache": _compile_cache(cfg, layout), "lora": cfg.lora,
              "chat_template": cfg.chat_template}
    values = {
        "sft": {**common, "run_dir": str(layout.stage("sft").root), "model_dir": cfg.policy_dir,
                "lora": cfg.lora if cfg.policy_dir else models.LoraConfig(),
                "data.file": cfg.sft_file, "data.source": "text"},
        "reward": {**common, "run_dir": str(layout.stage("reward").root), "model_dir": policy_dir,
                   "lora": cfg.lora if cfg.lora_reward else models.LoraConfig(),
                   "data.train_file": prefs, "data.max_prompt_len": cfg.prompt_len,
                   "data.max_response_len": cfg.new_tokens + 2},
        "ppo": {**common, "run_dir": str(layout.stage("ppo").root), "policy_dir": policy_dir,
                "reward_dir": str(layout.stage("reward").export), "prompts.file": cfg.prompts_file,
                "prompts.field": cfg.prompts_field, "prompts.max_prompt_len": cfg.prompt_len,
                "sampling.max_new_tokens": cfg.new_tokens, "monitor_terms": cfg.gold,
                "rollout.advantage": cfg.method if cfg.method in ("rloo", "grpo") else "gae",
                "rollout.group_size": cfg.group_size if cfg.method in ("rloo", "grpo") else 1},
        "online": {**common, "run_dir": str(layout.stage("online").root),
                   "policy_dir": policy_dir, "reward_dir": str(layout.stage("reward").export),
                   "prompts.file": cfg.prompts_file, "prompts.field": cfg.prompts_field,
                   "prompts.max_prompt_len": cfg.prompt_len,
                   "sampling.max_new_tokens": cfg.new_tokens},
        "offline": {**common, "run_dir": str(layout.stage("offline").root),
                    "policy_dir": policy_dir, "data.train_file": prefs,
                    "data.kind": cfg.reward.data.kind, "data.max_prompt_len": cfg.prompt_len,
                    "data.max_response_len": cfg.new_tokens + 2,
                    "data.rating_low": rd.rating_low, "data.rating_high": rd.rating_high,
                    "data.on_error": rd.on_error,
                    # unused unless the method is offline: one that reads the data's kind
                    "loss.method": cfg.method if cfg.method in offline.METHODS else next(
                        m for m in offline.METHODS
                        if rd.kind in offline.METHOD_KINDS[m])},
    }
    assert {k: set(v) for k, v in values.items()} == \
        {k: set(v) for k, v in _PIPELINE_OWNED.items()}, "keep _PIPELINE_OWNED in step"
    return tuple(_replace(getattr(cfg, stage), values[stage]) for stage in STAGES)


def run_inputs(cfg: PipelineConfig, layout: PipelineLayout) -> tuple[str, str]:
    """(the policy the reward and policy stages start from, the comparisons they learn from):
    the SFT export or `policy_dir` when SFT is skipped; the user's preference file or the
    comparisons the run labels."""
    policy_dir = cfg.policy_dir if cfg.sft.steps <= 0 else str(layout.stage("sft").export)
    return policy_dir, cfg.preference_file or str(layout.comparisons)


def _compile_cache(cfg: PipelineConfig, layout: PipelineLayout) -> str:
    """The one compilation cache of every stage: "auto" is the pipeline's, not each stage's."""
    return str(layout.compile_cache) if cfg.compile_cache == "auto" else cfg.compile_cache


def run_pipeline(cfg: PipelineConfig) -> PipelineResult:
    """Run every stage into `cfg.run_dir` (rerunning resumes each stage where it stopped) and
    write eval.json, run.json and report.md; return the headline numbers."""
    train.initialize()  # before anything touches JAX (the stages find it done)
    check_inputs(cfg)
    layout = PipelineLayout(cfg.run_dir)
    resolved = train.config_to_dict(cfg)
    if any(layout.stage(name).config.is_file() for name in STAGES):
        check_run_config(layout.config, resolved, allow_change=cfg.allow_config_change,
                         defaults=train.config_to_dict(PipelineConfig()))
    record_run_config(layout.config, resolved)
    train.enable_compilation_cache(_compile_cache(cfg, layout))  # before anything compiles
    gold_fn, seconds = rl_eval.TEXT_TERMS[cfg.gold], {}
    # a rerun (resuming, or redoing a finished run) keeps the times of the invocation that did
    # each stage's work: run.json records a stage's time once the stage completes
    earlier = (json.loads(layout.info.read_text()).get("stage_seconds", {})
               if layout.info.is_file() else {})

    def timed(name, fn, *args):
        print(f"== {name} (stage {len(seconds) + 1})", flush=True)
        start = time.perf_counter()
        out = fn(*args)
        if not getattr(out, "preempted", False):
            seconds[name] = earlier.get(name, time.perf_counter() - start)
            if train.is_main_process():
                layout.info.parent.mkdir(parents=True, exist_ok=True)
                layout.info.write_text(json.dumps({"stage_seconds": seconds}, indent=1))
        return out

    def preempted(name):
        print(f"stage {name} was preempted after saving; rerun the same command to resume",
              flush=True)
        return PipelineResult(str(layout.root), preempted_stage=name)

    policy_dir, prefs = run_inputs(cfg, layout)
    sft, rm, ppo_cfg, online_cfg, off_cfg = stage_configs(cfg, layout, policy_dir, prefs)
    notes, warnings = [], []
    if cfg.sft.steps > 0:
        sft_result = timed("sft", train_sft, sft)
        if sft_result.preempted:
            return preempted("sft")
        notes += sft_result.data
        warnings += sft_result.warnings
    labels = (timed("comparisons", sample_comparisons, cfg, ppo_cfg, policy_dir, gold_fn, prefs)
              if not cfg.preference_file else {"preference_file": prefs})
    rm_result = timed("reward", train_reward_model, rm)
    if rm_result.preempted:
        return preempted("reward")
    notes += rm_result.data
    warnings += rm_result.warnings
    policy_rows, trained = [], None
    if cfg.method != "best_of_n":
        stage, run, stage_cfg = (("ppo", train_ppo, ppo_cfg) if cfg.method in PPO_FAMILY else
                                 ("online", train_online_dpo, online_cfg)
                                 if cfg.method == "online_dpo" else
                                 ("offline", train_offline, off_cfg))
        result = timed(cfg.method, run, stage_cfg)
        if result.preempted:
            return preempted(cfg.method)
        notes += result.data
        warnings += result.warnings
        policy_rows, trained = layout.stage(stage).read_metrics(), result.export_dir
    ev = timed("evaluation", evaluate_before_after, cfg, ppo_cfg, trained, gold_fn)
    info = {"seed": cfg.seed, "stage_seconds": seconds, **labels, "gold": cfg.gold,
            "method": cfg.method, "best_of_n": cfg.best_of_n,
            "constraint_cost": cfg.ppo.constraint.cost,
            "annotator_judge": cfg.annotator_judge,
            "annotator_temperatures": cfg.annotator_temperatures,
            "report_samples": cfg.report_samples, "run_dir": str(layout.root),
            "before_label": "before (SFT)" if cfg.sft.steps > 0 else "before (initial policy)",
            "data": notes, "warnings": warnings,
            "custom_loss": (cfg.ppo.ppo.policy_loss if cfg.method in PPO_FAMILY
                            else cfg.offline.loss.custom if cfg.method in offline.METHODS
                            else cfg.online.loss.custom if cfg.method == "online_dpo"
                            else ""),
            **({"online_judge": cfg.online.judge, "online_loss": cfg.online.loss.method}
               if cfg.method == "online_dpo" else {}),
            "config": resolved}
    if train.is_main_process():
        layout.evaluation.write_text(json.dumps(ev, indent=1))
        layout.info.write_text(json.dumps(info, indent=1))
        rl_eval.write_report(
            layout.report, layout.plots, info=info,
            reward_rows=layout.stage("reward").read_metrics(),
            reward_summary=json.loads(layout.stage("reward").eval_summary.read_text()),
            policy_rows=policy_rows, evaluation=ev,
            gold_key=f"reward_terms/{cfg.gold}")
    b, a = ev["before"]["summary"], ev["after"]["summary"]
    result = PipelineResult(str(layout.root), str(layout.report), b["gold"], a["gold"],
                            b["proxy"], a["proxy"], a["kl"], round(sum(seconds.values()), 1))
    print(json.dumps(dataclasses.asdict(result)), flush=True)
    return result
