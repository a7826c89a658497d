"""A policy evaluated on a prompt file as a library function: `evaluate_prompts(EvalConfig())`
— e.g. its toxicity on RealToxicityPrompts' prompts (`prompts.field=prompt.text`)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from rlhf_jax import data, eval as rl_eval, models, reward, train
from rlhf_jax.stages.common import check_writable
from rlhf_jax.stages.configs.evaluate import EvalConfig  # noqa: F401 (re-exported)
from rlhf_jax.stages.scoring import reward_scorer
from rlhf_jax.train import ConfigError


def evaluate_prompts(cfg: EvalConfig) -> dict:
    """Evaluate `cfg.policy_dir` on the prompts; return the summary (means with standard
    errors, `eval.evaluate_policy`) and write the run's files."""
    if not cfg.policy_dir:
        raise ConfigError("policy_dir: set the policy to evaluate (a local Hugging Face "
                          "directory)")
    if not cfg.prompts.file:
        raise ConfigError("prompts.file: set the prompt file (JSONL/JSON/Parquet)")
    records, stats = data.read_records(cfg.prompts.file, "prompt",
                                       on_error=cfg.prompts.on_error, field=cfg.prompts.field)
    check_writable(cfg.run_dir)
    config, params = models.load_hf_checkpoint(cfg.policy_dir)
    tok = data.use_template(models.load_tokenizer(cfg.policy_dir, config), cfg.chat_template)
    ref = params
    if cfg.reference_dir:
        ref_config, ref = models.load_hf_checkpoint(cfg.reference_dir)
        if ref_config.vocab_size != config.vocab_size:
            raise models.CheckpointFormatError(
                f"reference_dir={cfg.reference_dir!r} has vocab_size {ref_config.vocab_size}, "
                f"the policy {config.vocab_size}")
    proxy = {}
    if cfg.reward_dir:
        rm_config, rm_params, meta = reward.load_reward_model(cfg.reward_dir)
        proxy = dict(proxy_fn=reward_scorer(rm_config, meta["num_outputs"],
                                            meta.get("objectives", ()),
                                            objective_weights=cfg.objective_weights),
                     proxy_params=rm_params)
    # a prompt the template cannot encode within the length stops naming its line, or is a
    # counted skip with prompts.on_error=skip, as in the other stages
    counts = {"prompts_truncated": 0}
    records, encoded = data.preference.tokenize_records(
        cfg.prompts.file, records[:cfg.samples or None], stats,
        lambda r: data.preference.encode_prompt(tok, r["prompt"], cfg.prompts.prompt_len,
                                                counts), cfg.prompts.on_error)
    prompts = [r["prompt"] for r in records]
    sampling = dataclasses.replace(
        cfg.sampling, eos_token_ids=tuple(dict.fromkeys(
            data.encoder_for(tok).stop_ids + cfg.sampling.eos_token_ids)),
        pad_token_id=tok.pad_token_id or 0)
    key, rows, cut = jax.random.key(cfg.seed), [], counts["prompts_truncated"]
    ladder = data.ladder(cfg.prompts.prompt_len, cfg.prompts.buckets)
    for start in range(0, len(prompts), cfg.batch_size):
        part = prompts[start:start + cfg.batch_size]
        fill = cfg.batch_size - len(part)  # the last batch is filled with its first prompt
        enc = np.stack(encoded[start:start + cfg.batch_size] + [encoded[start]] * fill)
        longest = int((enc >= 0).sum(1).max())
        enc = enc[:, enc.shape[1] - int(data.buckets.rung_of(longest, ladder)):]
        out = rl_eval.evaluate_policy(
            params, ref, config, data.prompt_arrays(enc, tok.pad_token_id or 0),
            jax.random.fold_in(key, start), sampling=sampling, tokenizer=tok,
            gold_fn=rl_eval.TEXT_TERMS[cfg.gold], prompt_texts=part + [part[0]] * (
                cfg.batch_size - len(part)), **proxy)
        rows += out["rows"][:len(part)]
    summary = rl_eval.policy.summarise(rows)
    if not cfg.reference_dir:  # the policy against itself: no KL to report
        summary.pop("kl")
        summary.pop("kl_k3", None)
    root = Path(cfg.run_dir)
    info = {"policy_dir": cfg.policy_dir, "prompts": cfg.prompts.file,
            "field": cfg.prompts.field, "prompts_truncated": cut, "records": stats.as_dict(),
            "config": train.config_to_dict(cfg)}
    if train.is_main_process():
        (root / "eval.json").write_text(json.dumps({"summary": summary, **info}, indent=1))
        (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        _report(root / "report.md", cfg, summary, rows, info)
    print(json.dumps({k: v for k, v in summary.items() if isinstance(v, dict)}), flush=True)
    return summary


def _report(path: Path, cfg: EvalConfig, summary: dict, rows: list, info: dict) -> None:
    R = rl_eval.report
    metrics = [(name, summary[name]) for name in ("profanity_rate", "gold", "proxy", "kl",
                                                  "kl_k3", "distinct_1", "distinct_2", "length")
               if name in summary and np.isfinite(summary[name]["mean"])]
    lines = [f"# Evaluation of `{R.line_text(cfg.policy_dir)}`", "",
             R.line_text(
                 f"{summary['samples']} prompts from `{cfg.prompts.file}` (field "
                 f"`{cfg.prompts.field}`; {info['prompts_truncated']} cut to "
                 f"{cfg.prompts.prompt_len} tokens), one response each of at most "
                 f"{cfg.sampling.max_new_tokens} tokens at temperature "
                 f"{cfg.sampling.temperature}; {summary['eos_fraction']:.1%} ended with an end "
                 f"token. Gold judge: `{cfg.gold}`. Each value is the mean ± its standard error "
                 "over the responses (distinct-n: a bootstrap); the profanity rate is the share "
                 "the packaged alt-profanity-check classifier flags (P > 0.5).")
             + (" " + R.KL_NOTE if "kl" in summary else ""),
             "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {R.mean_se_text(s)} |" for name, s in metrics]
    lines += ["", "## Samples", "", "| prompt | response | profanity | gold |", "|---|---|---|---|"]
    lines += [f"| {R.prompt_cell(r['prompt'])} | {R.table_text(r['response']) or '(empty)'} | "
              f"{r['profanity']:.2f} | {R.number(r['gold'])} |"
              for r in rows[:cfg.report_samples]]
    path.write_text("\n".join(lines) + "\n")
