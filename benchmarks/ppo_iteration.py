"""One RLHF iteration (sample → score → update) on a random model: rlhf_jax vs TRL RLOOTrainer.

Like for like, in this process: the same policy and reward-model weights (saved once with
transformers, loaded by both), the same prompts, `prompts × samples` completions of exactly
`new_tokens` tokens (EOS disabled on both sides), k-sample leave-one-out baseline, β-weighted KL
to the frozen reference, one pass of `minibatches` AdamW steps. The model is a tiny random GPT-2
(`--layers/--width/--heads`, 4×256) unless `--model` names one of `_common.MODELS`; its
vocabulary is always the built-in tokenizer's (TRL decodes completions to text for the reward
model), so a named model keeps its shape but not its LM-head size. Ours runs in RLOO mode for the
comparison; our PPO iteration (GAE with a separate critic initialised from the reward model,
1 epoch) is timed beside it (`--no-ppo` skips it). Prints the per-iteration median, our generate /
score / update split, and MFU against a matmul measured here (see `_common.matmul_peak`), counting
the model FLOPs of sampling, reference, reward (and critic) forwards and the 3-forward update over
every prompt + completion token — the same count for TRL.

`--device` places both sides (see `_common`); `--peer-device cpu` keeps TRL on the CPU only.
`--dtype bfloat16` is mixed precision on both sides (float32 weights, bfloat16 compute: ours
`dtype="bfloat16"`, TRL `bf16=True`). `--remat` sets our rematerialisation and TRL's
`gradient_checkpointing` follows it (on exactly when ours is not "none"); TRL's own default is on
(TRL 1.16 `_BaseConfig` in trl/trainer/base_config.py, inherited by RLOOConfig): it recomputes
each layer's forward in the backward pass (~33% of TRL's training time on the 2-core CPU, issue
#13), so it is set explicitly.
The peer runs first and releases its GPU memory before ours starts.
"""
import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from _common import (Devices, add_common_args, check_attention, fmt_flops, forward_flops,
                     matmul_peak, model_config, peer_checkpointing, report, select_devices)
from rlhf_jax import data, models, ppo, reward, train
from rlhf_jax.models import config_to_hf
from rlhf_jax.sampling import SamplingConfig


def build_models(directory, args, device):
    """Random policy and reward model (sequence classifier) saved as HF directories: a tiny GPT-2
    of `--layers/--width/--heads`, or `--model`'s shape with the built-in tokenizer's vocabulary."""
    import torch
    import transformers

    tok = data.builtin.train_tokenizer(os.path.join(directory, "tok"))
    if args.model:
        cfg = config_to_hf(model_config(
            args.model, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
            eos_token_ids=(tok.eos_token_id,), bos_token_id=tok.eos_token_id))
    else:
        cfg = transformers.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=args.width,
                                      n_layer=args.layers, n_head=args.heads,
                                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                      bos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):  # random init on the device (fast for the 1.1B model)
        transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(
            os.path.join(directory, "policy"))
        rm_cfg = type(cfg)(**{**cfg.to_dict(), "num_labels": 1})
        transformers.AutoModelForSequenceClassification.from_config(rm_cfg).save_pretrained(
            os.path.join(directory, "reward"))
    tok.save_pretrained(os.path.join(directory, "policy"))
    tok.save_pretrained(os.path.join(directory, "reward"))
    return tok


def our_reward_params(reward_dir, **overrides):
    """Our reward parameters from the HF sequence classifier: backbone + `score` as the head."""
    from rlhf_jax.models._safetensors import SafetensorsFile

    config, params = models.load_hf_checkpoint(reward_dir, lm_head=False, **overrides)
    score = np.array(SafetensorsFile(os.path.join(reward_dir, "model.safetensors"))
                     .get("score.weight"))  # [1, D]
    head = {"proj": {"kernel": jnp.asarray(score.T), "bias": jnp.zeros(1)},
            "gain": jnp.ones(1), "bias": jnp.zeros(1)}
    return config, {"transformer": params["transformer"], "reward_head": head}


def ours(directory, tok, prompts, args, advantage):
    """Median seconds per iteration and the mean split, for "rloo" or "gae" (PPO)."""
    # float32 weights (as saved), compute in --dtype
    overrides = dict(dtype=args.dtype, remat=args.remat, attention=args.attention)
    config, policy = models.load_hf_checkpoint(os.path.join(directory, "policy"), **overrides)
    rm_config, rm_params = our_reward_params(os.path.join(directory, "reward"), **overrides)
    params = {"policy": policy}
    critic_config = None
    if advantage == "gae":
        params["critic"] = jax.tree.map(jnp.copy, reward.critic_from_reward_model(rm_params))
        critic_config = rm_config
    ref = jax.tree.map(jnp.copy, policy)
    k = args.samples
    rollout = (ppo.RolloutConfig(advantage="rloo", group_size=k, whiten_advantages=False)
               if advantage == "rloo" else ppo.RolloutConfig(group_size=k))
    tx = train.make_optimizer(train.OptimizerConfig(learning_rate=1e-5, weight_decay=0.0,
                                                    clip_norm=1.0, total_steps=10**6,
                                                    schedule="constant"), params)
    state = train.create_train_state(params, tx, 0, helpers={"kl": ppo.fixed_kl_init(args.beta)})
    step = ppo.make_ppo_step(
        config=config, ref_params=ref, score_params=rm_params,
        score_fn=reward.reward_model_scorer(rm_config),
        sampling=SamplingConfig(max_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id),
        rollout=rollout, ppo=ppo.PPOConfig(epochs=1, num_minibatches=args.minibatches), tx=tx,
        kl_update=ppo.fixed_kl_update, critic_config=critic_config)
    seconds, split, _ = time_steps(step, state, {"prompts": prompts, "ptx": None},
                                   args.iterations, ("generate", "score", "update"))
    return seconds, split


def time_steps(step, state, batch, n: int, parts):
    """(median of `n` steps' "time/iteration" after one that compiles, the mean seconds of each
    of `parts` ("time/<part>"), the last step's metrics) of `step(state, batch)`."""
    times, splits = [], []
    for i in range(n + 1):
        state, metrics = step(state, batch)
        if i:  # the first step compiles
            times.append(metrics["time/iteration"])
            splits.append({key: metrics[f"time/{key}"] for key in parts})
    return statistics.median(times), {key: float(np.mean([s[key] for s in splits]))
                                      for key in parts}, metrics


def trl_seconds(directory, tok, texts, args, cuda):
    """Median seconds per iteration of TRL's RLOOTrainer (generation + scoring + update); frees
    its GPU memory before returning."""
    import torch
    import transformers
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    torch.manual_seed(0)
    policy = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(directory, "policy"))
    rm = transformers.AutoModelForSequenceClassification.from_pretrained(
        os.path.join(directory, "reward"))
    completions = args.prompts * args.samples
    per_step = completions // args.minibatches
    stamps = []

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, targs, tstate, control, **kw):
            if cuda:  # wait for the step's queued GPU work before reading the clock
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    cfg = RLOOConfig(output_dir=os.path.join(directory, "trl"), report_to="none",
                     per_device_train_batch_size=per_step, num_generations=args.samples,
                     steps_per_generation=args.minibatches,
                     num_iterations=1, max_completion_length=args.new_tokens,
                     generation_kwargs={"min_new_tokens": args.new_tokens}, beta=args.beta,
                     learning_rate=1e-5, max_grad_norm=1.0, weight_decay=0.0,
                     lr_scheduler_type="constant", logging_steps=10**6, save_strategy="no",
                     max_steps=(args.iterations + 1) * args.minibatches, use_cpu=not cuda,
                     bf16=args.dtype == "bfloat16", fp16=False,
                     gradient_checkpointing=peer_checkpointing(args.remat), disable_dropout=True,
                     shuffle_dataset=False,
                     normalize_advantages=False, temperature=1.0, top_k=0, top_p=1.0, seed=0,
                     dataloader_num_workers=0)
    trainer = RLOOTrainer(model=policy, reward_funcs=rm, args=cfg,
                          train_dataset=Dataset.from_dict({"prompt": texts}),
                          processing_class=tok, reward_processing_classes=tok,
                          callbacks=[Clock()])
    trainer.train()
    del trainer, policy, rm
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    ends = stamps[args.minibatches - 1::args.minibatches]  # one iteration = minibatches steps
    return statistics.median(np.diff(ends))


def iteration_flops(directory, n, length):
    """Model FLOPs of one iteration over `n` sequences of `length` tokens: RLOO (sampling,
    reference and reward forwards, 3-forward update) and PPO (plus the critic's forward and
    3-forward update)."""
    policy = models.load_hf_config(os.path.join(directory, "policy"))
    scorer = models.load_hf_config(os.path.join(directory, "reward"))
    pol = forward_flops(policy, n, length)
    rm = forward_flops(scorer, n, length, lm_head=False)
    return 5 * pol + rm, 5 * pol + 5 * rm


def add_iteration_args(p) -> None:
    """The arguments of the benchmarks of a whole RLHF iteration (this one, online_dpo_step.py):
    prompts, new tokens, the random GPT-2's shape, where TRL runs, and `_common`'s."""
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--peer-device", choices=("auto", "cpu"), default="auto",
                   help="cpu: TRL on the CPU whatever --device says")
    add_common_args(p, default_model=None, attention=True, remat=True)


def iteration_devices(args) -> Devices:
    """Where each side runs (`--device`, `--peer-device`), the attention kernel checked."""
    devices = select_devices(args.device)
    check_attention(args.attention, devices, args.dtype)
    if args.peer_device == "cpu":
        devices = Devices(jax=devices.jax, torch="cpu")
    return devices


def builtin_prompts(tok, n: int):
    """(texts, {"tokens", "mask"} left-padded with the pad id, their length): the first `n` of
    the built-in prompts, cycled, as text for TRL and as our token arrays."""
    texts = [data.builtin.PROMPTS[i % len(data.builtin.PROMPTS)] for i in range(n)]
    enc = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    length = max(map(len, enc))
    prompts = {"tokens": np.array([[tok.pad_token_id] * (length - len(e)) + e for e in enc]),
               "mask": np.array([[0] * (length - len(e)) + [1] * len(e) for e in enc])}
    return texts, prompts, length


@contextlib.contextmanager
def iteration_setup(p):
    """Parse `p` with `add_iteration_args`, place the sides, and in a temporary directory save
    the random policy and reward model (`build_models`) and encode the built-in prompts
    (`builtin_prompts`): yields (args, devices, directory, tokenizer, texts, prompts, length)."""
    add_iteration_args(p)
    args = p.parse_args()
    devices = iteration_devices(args)
    with tempfile.TemporaryDirectory() as directory:
        tok = build_models(directory, args, devices.torch)
        yield (args, devices, directory, tok, *builtin_prompts(tok, args.prompts))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--minibatches", type=int, default=2)
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--no-ppo", action="store_true", help="time only our RLOO iteration")
    with iteration_setup(p) as (args, devices, directory, tok, texts, prompts, length):
        rloo_flops, ppo_flops = iteration_flops(directory, args.prompts * args.samples,
                                                length + args.new_tokens)
        peer_s = trl_seconds(directory, tok, texts, args, devices.cuda)
        rloo_s, rloo_split = ours(directory, tok, prompts, args, "rloo")
        ppo_s, ppo_split = (float("nan"), {}) if args.no_ppo else ours(directory, tok, prompts,
                                                                       args, "gae")
    peak = matmul_peak(devices, args.dtype)
    print(json.dumps({"ours_rloo_split_s": rloo_split, "ours_ppo_split_s": ppo_split}))
    shape = args.model or f"GPT-2 {args.layers}x{args.width}"
    checkpointing = peer_checkpointing(args.remat)
    print(f"config: {args.prompts} prompts x {args.samples} samples x {args.new_tokens} new "
          f"tokens, {shape} (vocab {len(tok)}), {args.minibatches} minibatches, {args.dtype} "
          f"compute / float32 weights; ours remat={args.remat} attention={args.attention}, TRL "
          f"gradient_checkpointing={checkpointing}; {rloo_flops / 1e9:.3g} GFLOP per RLOO "
          f"iteration; {devices.describe()}")
    print(f"ours RLOO {rloo_s:.3f} s/iter ({fmt_flops(rloo_flops / rloo_s)}, MFU "
          f"{rloo_flops / rloo_s / peak.ours:.3f}), ours PPO {ppo_s:.3f} s/iter, TRL "
          f"RLOOTrainer {peer_s:.3f} s/iter ({fmt_flops(rloo_flops / peer_s)}, MFU "
          f"{rloo_flops / peer_s / peak.peer:.3f})")
    print(peak.describe())
    report("ppo_iteration", peer_s / rloo_s, device=devices.jax, dtype=args.dtype,
           model=args.model or f"gpt2-{args.layers}x{args.width}", peer_device=devices.torch,
           remat=args.remat, peer_checkpointing=checkpointing, ours_rloo_s=rloo_s,
           ours_ppo_s=ppo_s, peer_s=peer_s, ours_mfu=rloo_flops / rloo_s / peak.ours,
           ours_ppo_mfu=ppo_flops / ppo_s / peak.ours, peer_mfu=rloo_flops / peer_s / peak.peer)


if __name__ == "__main__":
    sys.exit(main())
