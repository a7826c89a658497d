"""One RLHF iteration (sample → score → update) on a tiny random GPT-2: rlhf_jax vs TRL RLOOTrainer.

Like for like, in this process: the same policy and reward-model weights (saved once with
transformers, loaded by both), the same prompts, `prompts × samples` completions of exactly
`new_tokens` tokens (EOS disabled on both sides), k-sample leave-one-out baseline, β-weighted KL
to the frozen reference, one pass of `minibatches` AdamW steps, float32. Ours runs in RLOO mode
for the comparison; our PPO iteration (GAE with a separate critic initialised from the reward
model, 1 epoch) is timed beside it. Prints the per-iteration median and our generate / score /
update split. TRL runs on CUDA when torch sees a GPU (else on the CPU; `--peer-device cpu` forces
the CPU).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from _common import report
from rlhf_jax import data, models, ppo, reward, train
from rlhf_jax.sampling import SamplingConfig


def build_models(directory, layers, width, heads, seed=0):
    """Random tiny GPT-2 policy and reward model (sequence classifier) saved as HF directories."""
    import torch
    import transformers

    tok = data.builtin.train_tokenizer(os.path.join(directory, "tok"))
    cfg = transformers.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=width,
                                  n_layer=layers, n_head=heads, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(os.path.join(directory, "policy"))
    tok.save_pretrained(os.path.join(directory, "policy"))
    rm = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
        **cfg.to_dict(), num_labels=1))
    rm.save_pretrained(os.path.join(directory, "reward"))
    tok.save_pretrained(os.path.join(directory, "reward"))
    return tok


def our_reward_params(reward_dir):
    """Our reward parameters from the HF sequence classifier: backbone + `score` as the head."""
    from rlhf_jax.models._safetensors import SafetensorsFile

    config, params = models.load_hf_checkpoint(reward_dir, lm_head=False)
    score = np.array(SafetensorsFile(os.path.join(reward_dir, "model.safetensors"))
                     .get("score.weight"))  # [1, D]
    head = {"proj": {"kernel": jnp.asarray(score.T), "bias": jnp.zeros(1)},
            "gain": jnp.ones(1), "bias": jnp.zeros(1)}
    return config, {"transformer": params["transformer"], "reward_head": head}


def ours(directory, tok, prompts, args, advantage):
    """Median seconds per iteration and the mean split, for "rloo" or "gae" (PPO)."""
    config, policy = models.load_hf_checkpoint(os.path.join(directory, "policy"))
    rm_config, rm_params = our_reward_params(os.path.join(directory, "reward"))
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
    batch = {"prompts": prompts, "ptx": None}
    times, splits = [], []
    for i in range(args.iterations + 1):
        state, metrics = step(state, batch)
        if i:  # the first iteration compiles
            times.append(metrics["time/iteration"])
            splits.append({key: metrics[f"time/{key}"] for key in ("generate", "score", "update")})
    return statistics.median(times), {key: float(np.mean([s[key] for s in splits]))
                                      for key in splits[0]}


def trl_seconds(directory, tok, texts, args, cuda):
    """Median seconds per iteration of TRL's RLOOTrainer (generation + scoring + update)."""
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
                     bf16=False, fp16=False, disable_dropout=True, shuffle_dataset=False,
                     normalize_advantages=False, temperature=1.0, top_k=0, top_p=1.0, seed=0,
                     dataloader_num_workers=0)
    trainer = RLOOTrainer(model=policy, reward_funcs=rm, args=cfg,
                          train_dataset=Dataset.from_dict({"prompt": texts}),
                          processing_class=tok, reward_processing_classes=tok,
                          callbacks=[Clock()])
    trainer.train()
    ends = stamps[args.minibatches - 1::args.minibatches]  # one iteration = minibatches steps
    return statistics.median(np.diff(ends))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--minibatches", type=int, default=2)
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--peer-device", choices=("auto", "cpu"), default="auto",
                   help="auto: TRL on CUDA when torch sees a GPU")
    args = p.parse_args()
    import torch

    cuda = args.peer_device == "auto" and torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as directory:
        tok = build_models(directory, args.layers, args.width, args.heads)
        texts = [data.builtin.PROMPTS[i % len(data.builtin.PROMPTS)] for i in range(args.prompts)]
        enc = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        length = max(map(len, enc))
        prompts = {"tokens": np.array([[tok.pad_token_id] * (length - len(e)) + e for e in enc]),
                   "mask": np.array([[0] * (length - len(e)) + [1] * len(e) for e in enc])}
        rloo_s, rloo_split = ours(directory, tok, prompts, args, "rloo")
        ppo_s, ppo_split = ours(directory, tok, prompts, args, "gae")
        peer_s = trl_seconds(directory, tok, texts, args, cuda)
    print(json.dumps({"ours_rloo_split_s": rloo_split, "ours_ppo_split_s": ppo_split}))
    print(f"config: {args.prompts} prompts x {args.samples} samples x {args.new_tokens} new "
          f"tokens, GPT-2 {args.layers}x{args.width}, {args.minibatches} minibatches, f32; "
          f"TRL on {'cuda' if cuda else 'cpu'}")
    print(f"ours RLOO {rloo_s:.3f} s/iter, ours PPO {ppo_s:.3f} s/iter, "
          f"TRL RLOOTrainer {peer_s:.3f} s/iter")
    report("ppo_iteration", peer_s / rloo_s, ours_rloo_s=rloo_s, ours_ppo_s=ppo_s,
           peer_s=peer_s, device=jax.devices()[0].platform,
           peer_device="cuda" if cuda else "cpu")


if __name__ == "__main__":
    sys.exit(main())
