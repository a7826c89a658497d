"""DPO train step on a random policy: rlhf_jax vs TRL's DPOTrainer (PyTorch).

Same config (`--model`, GPT-2-small by default, with its LM head), 8 preference pairs by default,
each sequence 128 tokens: a 64-token prompt and a 64-token response (`--length`, `--prompt`),
every response ending in the end token, no padding. Sigmoid DPO loss with β = 0.1 against a
frozen reference (a copy of the initial policy), AdamW at lr 1e-5, global-norm clip 1.0, no
weight decay, constant rate, on both sides, measured in this process on `--device` (see
`_common`). `--dtype bfloat16` is mixed precision on both sides: float32 weights and optimiser
state, bfloat16 compute (ours: `dtype="bfloat16"`, TRL: `bf16=True`, i.e. torch autocast; TRL
1.16 defaults bf16 to True, so it is set explicitly). `--remat` sets our rematerialisation and
TRL's `gradient_checkpointing` follows it (on exactly when ours is not "none"; TRL's own default
is on, see reward_step.py and issue #13).

Two settings, each compared like with like:
  in-step (the headline `ratio`): the reference scores the batch inside every step. Ours:
    `make_offline_loss(model, OfflineLossConfig("dpo"), ref_params)` with the reference weights
    passed as jit arguments, as `stages.offline` does with `reference="step"`; TRL:
    `DPOTrainer(ref_model=...)` with `precompute_ref_log_probs=False`, its default.
  cached (`cached_ratio`): the reference's log-probs of the batch are computed once beforehand
    and read by the step, which runs the policy only. Ours: the batch's `reference_logprobs`
    fed as `inputs["reference"]` (what `stages.offline` does with its default
    `reference="cached"`); TRL: `precompute_ref_log_probs=True` (its pass over the data runs in
    `DPOTrainer.__init__`, outside the timed steps, as ours does).
Ours also times the reference forward alone, to show its share of the in-step step.

Both sides run the policy on the chosen and rejected sequences of a pair as one batch of
2 × pairs sequences (TRL concatenates [chosen; rejected]; ours flattens [pairs, 2]). TRL's data
go in as text through a word-level tokenizer built here (one word per token id), so its
collator sees exactly these token ids; the run checks that TRL counted 2 × pairs × length tokens
per step (its `num_tokens` metric).

Caveats. TRL's log-probs come from its fused, chunked LM head (`add_fused_lm_head`): no
[sequences, length, vocab] logits; on CUDA with Triton it projects only the response positions,
elsewhere (the CPU) every position. Ours computes the full logits and takes the response
positions, unless `--logit-chunk` > 0 (our chunked head over the response positions). TRL's
policy head also computes entropy, mean-logit and top-1 metrics, and its step logs metrics with
host syncs; that is TRL as shipped. Our step checks the loss and gradients for non-finite values
and may skip the update. Each side's step time is the median over `--repeats` steps after warm-up
(ours: 1 compiled warm-up call; TRL: 2 steps discarded).

FLOPs (for MFU) count the model's matmuls as in `_common`: the transformer over every token, the
LM head over the response positions only (the log-probs DPO needs), 3 × forward for the
policy's update, and one forward more for the reference in the in-step setting. MFU is the
fraction of a large matmul's FLOP/s measured here (`_common.matmul_peak`).
"""
import argparse
import copy
import statistics
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from _common import (add_common_args, check_attention, fmt_flops, forward_flops, matmul_peak,
                     model_config, peer_checkpointing, report, select_devices, time_fn,
                     trainer_step_timer)
from rlhf_jax.data import PreferenceBatch
from rlhf_jax.models import DecoderModel, config_to_hf, init_params
from rlhf_jax.offline import OfflineLossConfig, make_offline_loss, reference_logprobs
from rlhf_jax.train import OptimizerConfig, create_train_state, make_optimizer, make_train_step

BETA, LR, CLIP = 0.1, 1e-5, 1.0


def dpo_flops(cfg, sequences, length, response):
    """(policy update, reference forward) matmul FLOPs: the transformer over every token, the LM
    head (2·vocab·width per scored token) over the `response` positions of each sequence."""
    head = 2 * cfg.vocab_size * cfg.hidden_size * sequences * response
    forward = forward_flops(cfg, sequences, length, lm_head=False) + head
    return 3 * forward, forward


def preference_batch(tokens, prompt_len):
    """Our `PreferenceBatch` of `tokens` [pairs, 2, length]: response 0 chosen, no padding."""
    b = tokens.shape[0]
    return PreferenceBatch(
        tokens=jnp.asarray(tokens), mask=jnp.ones(tokens.shape, jnp.int32),
        ranks=jnp.tile(jnp.array([0, 1], jnp.int32), (b, 1)), valid=jnp.ones((b, 2), jnp.int32),
        is_comparison=jnp.ones(b, jnp.int32), rating=jnp.zeros(b),
        has_rating=jnp.zeros(b, jnp.int32), annotator=-jnp.ones(b, jnp.int32),
        weight=jnp.ones(b), index=jnp.arange(b, dtype=jnp.int32), prompt_len=prompt_len)


def ours_seconds(cfg, tokens, prompt_len, repeats):
    """(in-step s, cached s, reference forward s) per step: the median of `repeats` calls."""
    model = DecoderModel(cfg)  # the policy with its LM head
    params = init_params(model, jax.random.key(0))
    ref_params = jax.tree.map(lambda x: x.copy(), params)  # the step donates the policy
    tx = make_optimizer(OptimizerConfig(learning_rate=LR, weight_decay=0.0, clip_norm=CLIP,
                                        total_steps=1000, schedule="constant"), params)
    loss_cfg = OfflineLossConfig(method="dpo", beta=BETA)
    batch = preference_batch(tokens, prompt_len)

    def timed(step, inputs):
        holder = [create_train_state(jax.tree.map(lambda x: x.copy(), params), tx, 0)]

        def run():
            holder[0], metrics = step(holder[0], inputs)
            metrics["train/loss"].block_until_ready()
        seconds = time_fn(run, warmup=1, repeats=repeats)
        holder.clear()  # free the train state before the next measurement
        return seconds

    def in_step(state, inputs):  # the reference weights are jit arguments, as in stages.offline
        loss = make_offline_loss(model, loss_cfg, inputs["ref_params"])
        rest = {k: v for k, v in inputs.items() if k != "ref_params"}
        return make_train_step(loss, tx)(state, rest)

    step_s = timed(jax.jit(in_step, donate_argnums=0), {"batch": batch, "ref_params": ref_params})

    score = jax.jit(lambda p, b: reference_logprobs(model, p, b))
    reference = score(ref_params, batch)  # {"responses": [pairs, 2]}
    ref_s = time_fn(lambda: jax.block_until_ready(score(ref_params, batch)), repeats=repeats)
    ref_params = None  # the cached step runs without the reference weights
    cached = jax.jit(make_train_step(make_offline_loss(model, loss_cfg, None), tx),
                     donate_argnums=0)
    cached_s = timed(cached, {"batch": batch, "reference": reference})
    return step_s, cached_s, ref_s


def word_tokenizer(vocab_size):
    """A tokenizer with one word per id ("t0" … "t{V-2}", "<eos>" = V − 1, also the pad) that
    maps our token ids to text and back exactly; no BOS, no post-processing."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(vocab_size - 1)}
    vocab["<eos>"] = vocab_size - 1
    tok = Tokenizer(models.WordLevel(vocab, "<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>",
                                                pad_token="<eos>")


def peer_seconds(cfg, tokens, prompt_len, repeats, devices, *, bf16, checkpointing,
                 precompute):
    """TRL DPOTrainer's median step seconds over `repeats` steps after 2 warm-up steps."""
    import datasets
    import torch
    import transformers
    from trl import DPOConfig, DPOTrainer

    b, _, t = tokens.shape
    steps = repeats + 2
    words = lambda ids: " ".join("<eos>" if i == cfg.vocab_size - 1 else f"t{i}"  # noqa: E731
                                 for i in ids)
    rows = np.concatenate([tokens] * steps)
    # the responses start with a space so that prompt + response splits at the boundary
    ds = datasets.Dataset.from_dict({
        "prompt": [words(r[0, :prompt_len]) for r in rows],
        "chosen": [" " + words(r[0, prompt_len:]) for r in rows],
        "rejected": [" " + words(r[1, prompt_len:]) for r in rows]})
    torch.manual_seed(0)
    with torch.device(devices.torch):  # random init on the device (fast for the 1.1B model)
        model = transformers.AutoModelForCausalLM.from_config(config_to_hf(cfg)).float()
    ref_model = None if precompute else copy.deepcopy(model)  # TRL needs none to precompute
    timer, times = trainer_step_timer(devices)

    args = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=b,
                     max_steps=steps, learning_rate=LR, max_grad_norm=CLIP, weight_decay=0.0,
                     lr_scheduler_type="constant", beta=BETA, loss_type=["sigmoid"],
                     max_length=t, truncation_mode="keep_start", padding_free=False,
                     pad_to_multiple_of=None, precompute_ref_log_probs=precompute,
                     logging_steps=10**6, save_strategy="no", report_to=[],
                     use_cpu=not devices.cuda, dataloader_num_workers=0, disable_tqdm=True,
                     bf16=bf16, fp16=False, gradient_checkpointing=checkpointing)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=ds,
                         processing_class=word_tokenizer(cfg.vocab_size), callbacks=[timer])
    trainer.train()
    seen = trainer._total_train_tokens  # TRL's num_tokens metric: attention-mask tokens so far
    if seen != steps * 2 * b * t:
        raise SystemExit(f"TRL saw {seen} tokens in {steps} steps, not {steps} x 2 x {b} x {t}")
    return statistics.median(times[2:])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--length", type=int, default=128, help="prompt + response tokens")
    parser.add_argument("--prompt", type=int, default=None,
                        help="prompt tokens (default: half of --length)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--logit-chunk", type=int, default=0,
                        help="our LM head's vocabulary chunk for the log-probs (0: full logits)")
    add_common_args(parser, attention=True, remat=True)
    args = parser.parse_args()
    prompt = args.length // 2 if args.prompt is None else args.prompt
    if not 1 <= prompt < args.length:
        raise SystemExit(f"--prompt {prompt}: expected 1 <= prompt < --length {args.length}")
    response = args.length - prompt
    devices = select_devices(args.device)
    check_attention(args.attention, devices, args.dtype)
    cfg = model_config(args.model, args.dtype, param_dtype="float32", remat=args.remat,
                       attention=args.attention, logit_chunk=args.logit_chunk)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size - 1, (args.pairs, 2, args.length), dtype=np.int32)
    tokens[:, 0, :prompt] = tokens[:, 1, :prompt]  # one prompt per pair
    tokens[:, :, -1] = cfg.vocab_size - 1  # each response ends in the end token
    policy_flops, ref_flops = dpo_flops(cfg, 2 * args.pairs, args.length, response)
    step_flops = policy_flops + ref_flops
    ours_s, ours_cached_s, ours_ref_s = ours_seconds(cfg, tokens, prompt, args.repeats)
    import torch
    import trl
    checkpointing = peer_checkpointing(args.remat)
    peer = {precompute: peer_seconds(cfg, tokens, prompt, args.repeats, devices,
                                     bf16=args.dtype == "bfloat16", checkpointing=checkpointing,
                                     precompute=precompute) for precompute in (False, True)}
    peer_s, peer_cached_s = peer[False], peer[True]
    peak = matmul_peak(devices, args.dtype)

    def line(who, seconds, flops, ceiling):
        achieved = flops / seconds
        return (f"{who}: {seconds:.3f} s/step, {args.pairs / seconds:.2f} pairs/s, "
                f"{fmt_flops(achieved)}, MFU {achieved / ceiling:.2f}")

    print(f"config: {args.model} policy + frozen reference, DPO (sigmoid, beta {BETA}), "
          f"{args.pairs} pairs x {args.length} tokens (prompt {prompt} + response {response}), "
          f"{args.dtype} compute / float32 weights, AdamW lr {LR}; ours remat={args.remat} "
          f"attention={args.attention} logit_chunk={args.logit_chunk}, TRL "
          f"gradient_checkpointing={checkpointing}; {step_flops / 1e9:.3g} GFLOP per in-step "
          f"step, {policy_flops / 1e9:.3g} cached; {devices.describe()}")
    print(line(f"ours in-step (jax {jax.__version__})", ours_s, step_flops, peak.ours))
    print(line("ours cached", ours_cached_s, policy_flops, peak.ours))
    print(f"ours reference forward alone: {ours_ref_s:.3f} s ({ours_ref_s / ours_s:.0%} of the "
          f"in-step step; in-step - cached = {ours_s - ours_cached_s:.3f} s)")
    print(line(f"peer in-step (trl {trl.__version__} DPOTrainer, torch {torch.__version__})",
               peer_s, step_flops, peak.peer))
    print(line("peer precompute_ref_log_probs", peer_cached_s, policy_flops, peak.peer))
    print(peak.describe())
    print(f"ratio (peer s / ours s): in-step {peer_s / ours_s:.2f} (headline), cached "
          f"{peer_cached_s / ours_cached_s:.2f}")
    report("dpo_step", peer_s / ours_s, device=devices.jax, dtype=args.dtype, model=args.model,
           peer_device=devices.torch, remat=args.remat, peer_checkpointing=checkpointing,
           cached_ratio=peer_cached_s / ours_cached_s, ours_pairs_s=args.pairs / ours_s,
           peer_pairs_s=args.pairs / peer_s, ours_cached_pairs_s=args.pairs / ours_cached_s,
           peer_cached_pairs_s=args.pairs / peer_cached_s, ours_ref_frac=ours_ref_s / ours_s,
           ours_tflop_s=step_flops / ours_s / 1e12, peer_tflop_s=step_flops / peer_s / 1e12,
           peak_tflop_s=peak.ours / 1e12, ours_mfu=step_flops / ours_s / peak.ours,
           # the name for our in-step step's fraction of the measured matmul peak
           peak_frac=step_flops / ours_s / peak.ours,
           peer_mfu=step_flops / peer_s / peak.peer,
           ours_cached_mfu=policy_flops / ours_cached_s / peak.ours,
           peer_cached_mfu=policy_flops / peer_cached_s / peak.peer)


if __name__ == "__main__":
    main()
