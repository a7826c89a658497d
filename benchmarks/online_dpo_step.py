"""One online DPO step (sample → judge → update) on a random model: rlhf_jax vs TRL's
OnlineDPOTrainer (`trl.experimental.online_dpo`).

Like for like, in this process: the same policy and reward-model weights (saved once with
transformers and loaded by both, as in ppo_iteration.py), the same prompts (the built-in task's,
as text for TRL and tokenised the same way for ours), 2 completions per prompt (TRL's only
setting) of exactly `--new-tokens` tokens (EOS disabled on both sides: TRL `min_new_tokens`,
ours no EOS ids; every answer then lacks EOS alike, so both order a pair by the reward model
alone), sampled at temperature 1 with no top-k or top-p; sigmoid DPO with β = 0.1 against a
frozen copy of the initial policy; one AdamW step per online step (lr 1e-5, global-norm clip
1.0, no weight decay, constant rate). Ours is the stage's own step: `offline.make_online_step`
around `stages.online_update`, the reward model jitted as its judge. The model is a tiny random
GPT-2 (`--layers/--width/--heads`, 4×256) unless `--model` names one of `_common.MODELS`; its
vocabulary is always the built-in tokenizer's (TRL decodes completions to text for the reward
model). Each side's time is the median over `--steps` steps after warm-up (ours: 1 step, which
compiles; TRL: 2 steps); ours also prints its generate / judge / update split.

`--device` places both sides (see `_common`); `--peer-device cpu` keeps TRL on the CPU.
`--dtype bfloat16` is mixed precision on both sides (float32 weights, bfloat16 compute). TRL's
gradient checkpointing follows our `--remat` (on exactly when ours is not "none"; TRL's own
default is on, and with it on TRL also samples without a KV cache). The peer runs first and
releases its GPU memory before ours starts. FLOPs (for MFU) count the model's matmuls over every
prompt + completion token: sampling, the policy's forward and backward (3 forwards), the
reference's and the reward model's forwards, the same count for TRL.
"""
import argparse
import gc
import os
import statistics
import sys

import jax

from _common import fmt_flops, forward_flops, matmul_peak, peer_checkpointing, report, \
    trainer_step_timer
from ppo_iteration import iteration_setup, our_reward_params, time_steps
from rlhf_jax import models, offline, reward, train
from rlhf_jax.sampling import SamplingConfig
from rlhf_jax.stages import online_update

BETA, LR, CLIP, SAMPLES = 0.1, 1e-5, 1.0, 2


def ours(directory, tok, prompts, args):
    """(median seconds per step, mean generate / judge / update split)."""
    overrides = dict(dtype=args.dtype, remat=args.remat, attention=args.attention)
    config, policy = models.load_hf_checkpoint(os.path.join(directory, "policy"), **overrides)
    rm_config, rm_params = our_reward_params(os.path.join(directory, "reward"), **overrides)
    ref = jax.tree.map(lambda x: x.copy(), policy)  # the update donates the policy
    tx = train.make_optimizer(train.OptimizerConfig(learning_rate=LR, weight_decay=0.0,
                                                    clip_norm=CLIP, total_steps=10**6,
                                                    schedule="constant"), policy)
    state = train.create_train_state(policy, tx, 0)
    update = jax.jit(online_update(models.DecoderModel(config),
                                   offline.OfflineLossConfig(method="dpo", beta=BETA), tx,
                                   SAMPLES), donate_argnums=0)
    score = jax.jit(reward.reward_model_scorer(rm_config))
    step = offline.make_online_step(
        config=config, judge=lambda *seq: score(rm_params, *seq), samples_per_prompt=SAMPLES,
        sampling=SamplingConfig(max_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id),
        update=lambda s, inputs: update(s, {**inputs, "ref_params": ref}))
    seconds, split, metrics = time_steps(step, state, prompts, args.steps,
                                         ("generate", "judge", "update"))
    length = float(metrics["response/length"])
    if length != args.new_tokens:
        raise SystemExit(f"our answers have {length} tokens, not {args.new_tokens}")
    return seconds, split


def trl_seconds(directory, tok, texts, args, devices):
    """TRL OnlineDPOTrainer's median seconds per step after 2 warm-up steps; frees its GPU
    memory before returning."""
    import torch
    import transformers
    from datasets import Dataset
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    torch.manual_seed(0)
    load = transformers.AutoModelForCausalLM.from_pretrained
    policy, ref = (load(os.path.join(directory, "policy")) for _ in range(2))
    rm = transformers.AutoModelForSequenceClassification.from_pretrained(
        os.path.join(directory, "reward"))
    timer, times = trainer_step_timer(devices)
    steps = args.steps + 2
    cfg = OnlineDPOConfig(
        output_dir=os.path.join(directory, "trl"), report_to=[],
        per_device_train_batch_size=args.prompts, max_new_tokens=args.new_tokens,
        generation_kwargs={"min_new_tokens": args.new_tokens}, temperature=1.0, top_k=0,
        top_p=1.0, missing_eos_penalty=None, beta=[BETA], loss_type="sigmoid",
        learning_rate=LR, max_grad_norm=CLIP, weight_decay=0.0, lr_scheduler_type="constant",
        logging_steps=10**6, save_strategy="no", max_steps=steps, use_cpu=not devices.cuda,
        bf16=args.dtype == "bfloat16", fp16=False,
        gradient_checkpointing=peer_checkpointing(args.remat), disable_dropout=True,
        dataloader_num_workers=0, disable_tqdm=True, seed=0)
    trainer = OnlineDPOTrainer(model=policy, ref_model=ref, reward_funcs=rm, args=cfg,
                               train_dataset=Dataset.from_dict({"prompt": texts * steps}),
                               processing_class=tok, reward_processing_classes=tok,
                               callbacks=[timer])
    trainer.train()
    del trainer, policy, ref, rm
    gc.collect()
    if devices.cuda:
        torch.cuda.empty_cache()
    if len(times) != steps:
        raise SystemExit(f"TRL ran {len(times)} steps, not {steps}")
    return statistics.median(times[2:])


def step_flops(directory, n, length):
    """Model FLOPs of one step over `n` sequences of `length` tokens: sampling, the policy's
    forward and backward, the reference's and the reward model's forwards."""
    policy = forward_flops(models.load_hf_config(os.path.join(directory, "policy")), n, length)
    scorer = forward_flops(models.load_hf_config(os.path.join(directory, "reward")), n, length,
                           lm_head=False)
    return 5 * policy + scorer


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    with iteration_setup(p) as (args, devices, directory, tok, texts, prompts, length):
        flops = step_flops(directory, args.prompts * SAMPLES, length + args.new_tokens)
        peer_s = trl_seconds(directory, tok, texts, args, devices)
        ours_s, split = ours(directory, tok, prompts, args)
    peak = matmul_peak(devices, args.dtype)
    import torch
    import trl
    shape = args.model or f"GPT-2 {args.layers}x{args.width}"
    checkpointing = peer_checkpointing(args.remat)
    print(f"config: {args.prompts} prompts x {SAMPLES} samples x {args.new_tokens} new tokens, "
          f"{shape} (vocab {len(tok)}), DPO (sigmoid, beta {BETA}) against a frozen reference, "
          f"judged by a reward model, AdamW lr {LR}, {args.dtype} compute / float32 weights; "
          f"ours remat={args.remat} attention={args.attention}, TRL "
          f"gradient_checkpointing={checkpointing}; {flops / 1e9:.3g} GFLOP per step; "
          f"{devices.describe()}")
    print(f"ours (jax {jax.__version__}): {ours_s:.4f} s/step (generate {split['generate']:.4f}, "
          f"judge {split['judge']:.4f}, update {split['update']:.4f}), "
          f"{fmt_flops(flops / ours_s)}, MFU {flops / ours_s / peak.ours:.3f}")
    print(f"peer (trl {trl.__version__} OnlineDPOTrainer, torch {torch.__version__}): "
          f"{peer_s:.4f} s/step, {fmt_flops(flops / peer_s)}, MFU "
          f"{flops / peer_s / peak.peer:.3f}")
    print(peak.describe())
    report("online_dpo", peer_s / ours_s, device=devices.jax, dtype=args.dtype,
           model=args.model or f"gpt2-{args.layers}x{args.width}", peer_device=devices.torch,
           remat=args.remat, peer_checkpointing=checkpointing, ours_s=ours_s, peer_s=peer_s,
           ours_generate_s=split["generate"], ours_judge_s=split["judge"],
           ours_update_s=split["update"], ours_mfu=flops / ours_s / peak.ours,
           peer_mfu=flops / peer_s / peak.peer)


if __name__ == "__main__":
    sys.exit(main())
