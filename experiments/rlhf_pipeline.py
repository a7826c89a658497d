"""The main job: SFT → simulated comparisons → reward model → PPO → evaluation and report.

    python experiments/rlhf_pipeline.py [--config.seed=1] [--config.policy_dir=D
        --config.preference_file=prefs.jsonl]

Every artifact lands in `--config.run_dir`: each stage's checkpoints and metrics, the data,
`eval.json` and `report.md` with its plots.
"""
import importlib.util
import json
import os
import sys
import time

import jax
import numpy as np

from rlhf_jax import data, eval as rl_eval, models, ppo, reward, train
from rlhf_jax.sampling import SamplingConfig, generate

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = os.path.join(HERE, "configs", "pipeline.py")


def stage(name):
    """A stage's main(argv), loaded from its script next to this one."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def flags(section, prefix="--config."):
    """A ConfigDict section as `--config.a.b=value` overrides."""
    out = []
    for key, value in section.items():
        if hasattr(value, "items"):
            out += flags(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={value}")
    return out


def prompt_texts(cfg, n):
    texts = ([r["prompt"] for r in data.read_records(cfg.prompts_file, "prompt")[0]]
             if cfg.prompts_file else data.builtin.PROMPTS)
    return [texts[i % len(texts)] for i in range(n)]


def encode(tokenizer, texts, length):
    counts = {"prompts_truncated": 0}
    rows = np.stack([data.preference.encode_prompt(tokenizer, t, length, counts) for t in texts])
    return data.prompt_arrays(rows, tokenizer.pad_token_id or 0)


def sampling_for(tok, cfg):
    eos = () if tok.eos_token_id is None else (tok.eos_token_id,)
    return SamplingConfig(max_new_tokens=cfg.max_new_tokens, pad_token_id=tok.pad_token_id or 0,
                          eos_token_ids=eos)


def sample_comparisons(cfg, policy_dir, gold_fn, path):
    """Pairs of SFT samples for each prompt, labelled by the simulated annotators."""
    config, params = models.load_hf_checkpoint(policy_dir)
    tok = models.load_tokenizer(policy_dir, config)
    sampling = sampling_for(tok, cfg)
    pairs, key, all_texts = [], jax.random.key(cfg.seed + 100), prompt_texts(cfg, cfg.comparisons)
    for chunk in range(0, cfg.comparisons, 250):
        texts = all_texts[chunk:chunk + 250]
        batch = encode(tok, [t for t in texts for _ in (0, 1)], cfg.max_prompt_len)
        out = generate(params, batch["tokens"], batch["mask"], jax.random.fold_in(key, chunk),
                       config=config, sampling=sampling)
        toks, mask = jax.device_get((out.tokens, out.mask))
        resp = [tok.decode(t[m > 0], skip_special_tokens=True) for t, m in zip(toks, mask)]
        pairs += [(p, a, b) for p, a, b in zip(texts, resp[0::2], resp[1::2]) if a != b]
    temps = tuple(float(t) for t in cfg.annotator_temperatures.split(","))
    records = data.builtin.simulate_annotators(pairs, gold_fn, temperatures=temps, seed=cfg.seed)
    data.builtin.write_jsonl(path, records)
    agree = [np.sign(gold_fn(r["prompt"], r["chosen"]) - gold_fn(r["prompt"], r["rejected"]))
             for r in records]  # how often the judge itself sides with the label (ties: half)
    return {"comparisons": len(records), "gold_label_agreement": float(np.mean(
        [1.0 if a > 0 else 0.5 if a == 0 else 0.0 for a in agree]))}


def evaluate(cfg, ref_dir, policy_dir, reward_dir, gold_fn):
    """Gold, proxy and KL of the reference (SFT) and the PPO policy on the same prompts."""
    config, ref = models.load_hf_checkpoint(ref_dir)
    _, after = models.load_hf_checkpoint(policy_dir)
    rm_config, rm_params, _ = reward.load_reward_model(reward_dir)
    tok = models.load_tokenizer(ref_dir, config)
    prompts = encode(tok, prompt_texts(cfg, cfg.eval_samples), cfg.max_prompt_len)
    kw = dict(sampling=sampling_for(tok, cfg), tokenizer=tok, gold_fn=gold_fn,
              proxy_fn=ppo.reward_model_scorer(rm_config), proxy_params=rm_params)
    key = jax.random.key(cfg.seed + 200)
    return {name: rl_eval.evaluate_policy(p, ref, config, prompts, key, **kw)
            for name, p in (("before", ref), ("after", after))}


def main(argv):
    cfg = train.parse_config(argv, DEFAULT)
    run, seconds = cfg.run_dir, {}
    gold_fn = rl_eval.TEXT_TERMS[cfg.gold]
    common = [f"--config.seed={cfg.seed}"]

    def timed(name, fn, *args):
        print(f"== {name} (stage {len(seconds) + 1})", flush=True)
        start = time.perf_counter()
        result = fn(*args)
        seconds[name] = time.perf_counter() - start
        return result

    policy_dir = cfg.policy_dir
    if cfg.sft.steps > 0:
        timed("sft", stage("train_sft"), [f"--config.run_dir={run}/sft", "--config.data.source=text",
                                          f"--config.model_dir={cfg.policy_dir}",
                                          f"--config.data.file={cfg.sft_file}",
                                          *common, *flags(cfg.sft)])
        policy_dir = f"{run}/sft/export"
    if not policy_dir:
        raise train.ConfigError("sft.steps=0 needs policy_dir (the policy to start PPO from)")
    prefs = cfg.preference_file or f"{run}/data/comparisons.jsonl"
    labels = (timed("comparisons", sample_comparisons, cfg, policy_dir, gold_fn, prefs)
              if not cfg.preference_file else {"preference_file": prefs})
    timed("reward", stage("train_reward"), [
        f"--config.run_dir={run}/reward", f"--config.model_dir={policy_dir}",
        f"--config.data.train_file={prefs}", f"--config.data.max_prompt_len={cfg.max_prompt_len}",
        f"--config.data.max_response_len={cfg.max_new_tokens + 2}", *common,
        *flags(cfg.reward)])
    timed("ppo", stage("train_ppo"), [
        f"--config.run_dir={run}/ppo", f"--config.policy_dir={policy_dir}",
        f"--config.reward_dir={run}/reward/export", f"--config.prompts.file={cfg.prompts_file}",
        f"--config.prompts.max_prompt_len={cfg.max_prompt_len}",
        f"--config.sampling.max_new_tokens={cfg.max_new_tokens}",
        f"--config.monitor_terms={cfg.gold}", *common, *flags(cfg.ppo)])
    ev = timed("evaluation", evaluate, cfg, policy_dir, f"{run}/ppo/export",
               f"{run}/reward/export", gold_fn)
    with open(f"{run}/eval.json", "w") as f:
        json.dump(ev, f, indent=1)
    with open(f"{run}/run.json", "w") as f:
        json.dump({"seed": cfg.seed, "stage_seconds": seconds, **labels,
                   "gold": cfg.gold, "annotator_temperatures": cfg.annotator_temperatures,
                   "report_samples": cfg.report_samples, "config": cfg.to_dict()}, f, indent=1)
    report = rl_eval.write_report(run, gold_key=f"reward_terms/{cfg.gold}")
    b, a = ev["before"]["summary"], ev["after"]["summary"]
    print(json.dumps({"gold_before": b["gold"], "gold_after": a["gold"], "kl_after": a["kl"],
                      "proxy_before": b["proxy"], "proxy_after": a["proxy"],
                      "seconds": round(sum(seconds.values()), 1), "report": str(report)}),
          flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
