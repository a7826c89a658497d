"""Reward-model train step on a random model: rlhf_jax vs TRL's RewardTrainer (PyTorch).

Same config (`--model`, GPT-2-small by default), 8 preference pairs of 128 tokens by default,
Bradley–Terry loss and AdamW on both sides, measured in this process on `--device` (see
`_common`). `--dtype bfloat16` is mixed precision on both sides: float32 weights and optimiser
state, bfloat16 compute (ours: `dtype="bfloat16"`, TRL: `bf16=True`, i.e. torch autocast).
`--remat` sets our rematerialisation and TRL's `gradient_checkpointing` follows it (on exactly when
ours is not "none"). TRL's own default is `gradient_checkpointing=True` (TRL 1.16, `_BaseConfig`
in trl/trainer/base_config.py, inherited by RewardConfig): it recomputes each layer's forward in
the backward pass, which cost TRL ~33% of its step time on the 2-core CPU (issue #13) when it was
left on; it is set explicitly here. Prints pairs/s, achieved FLOP/s and MFU: its fraction of a large matmul's FLOP/s
measured here (bfloat16 4096³ on a GPU; the run's dtype at 2048³ on the CPU).
"""
import argparse
import statistics
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from _common import (add_common_args, check_attention, fmt_flops, matmul_peak, model_config,
                     peer_checkpointing, report, select_devices, time_fn, train_flops,
                     trainer_step_timer)
from rlhf_jax.data import PreferenceBatch
from rlhf_jax.models import DecoderModel, config_to_hf, init_params
from rlhf_jax.reward import RewardLossConfig, make_reward_loss
from rlhf_jax.train import OptimizerConfig, create_train_state, make_optimizer, make_train_step


def ours_seconds(cfg, tokens, repeats):
    model = DecoderModel(cfg, heads=("reward",))
    params = init_params(model, jax.random.key(0))
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-5, weight_decay=0.0, clip_norm=1.0,
                                        total_steps=1000, schedule="constant"), params)
    state = create_train_state(params, tx, 0)
    del params
    b, _, t = tokens.shape
    batch = PreferenceBatch(
        tokens=jnp.asarray(tokens), mask=jnp.ones(tokens.shape, jnp.int32),
        ranks=jnp.tile(jnp.array([0, 1], jnp.int32), (b, 1)), valid=jnp.ones((b, 2), jnp.int32),
        is_comparison=jnp.ones(b, jnp.int32), rating=jnp.zeros(b), has_rating=jnp.zeros(
            b, jnp.int32), annotator=-jnp.ones(b, jnp.int32), weight=jnp.ones(b), prompt_len=0)
    step = jax.jit(make_train_step(make_reward_loss(model, RewardLossConfig()), tx),
                   donate_argnums=0)
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], batch)
        metrics["train/loss"].block_until_ready()
    seconds = time_fn(run, warmup=1, repeats=repeats)
    holder.clear()  # free the train state before the peer runs on the same device
    return seconds


def peer_seconds(cfg, tokens, repeats, devices, *, bf16, checkpointing):
    import datasets
    import torch
    import transformers
    from tokenizers import Tokenizer, models
    from trl import RewardConfig, RewardTrainer

    hf_cfg = config_to_hf(cfg)
    hf_cfg.num_labels, hf_cfg.pad_token_id = 1, cfg.vocab_size - 1
    with torch.device(devices.torch):  # random init on the device (fast for the 1.1B model)
        model = transformers.AutoModelForSequenceClassification.from_config(hf_cfg).float()
    # the collator pads with this tokenizer's pad id; the sequences need no padding
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, "<unk>")),
        pad_token="<pad>")
    n = tokens.shape[0] * (repeats + 2)
    rows = np.concatenate([tokens] * (repeats + 2))
    ds = datasets.Dataset.from_dict({"chosen_ids": rows[:, 0].tolist(),
                                     "rejected_ids": rows[:, 1].tolist()})
    timer, times = trainer_step_timer(devices)

    args = RewardConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=tokens.shape[0],
                        max_steps=repeats + 2, learning_rate=1e-5, max_grad_norm=1.0,
                        logging_steps=10**6, save_strategy="no", report_to=[],
                        use_cpu=not devices.cuda, max_length=None, dataloader_num_workers=0,
                        disable_tqdm=True, center_rewards_coefficient=None, bf16=bf16, fp16=False,
                        gradient_checkpointing=checkpointing)
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                            callbacks=[timer])
    assert len(ds) == n
    trainer.train()
    return statistics.median(times[2:])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    add_common_args(parser, attention=True, remat=True)
    args = parser.parse_args()
    devices = select_devices(args.device)
    check_attention(args.attention, devices, args.dtype)
    cfg = model_config(args.model, args.dtype, param_dtype="float32", remat=args.remat,
                       attention=args.attention)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size - 1, (args.pairs, 2, args.length), dtype=np.int32)
    flops = train_flops(cfg, 2 * args.pairs, args.length, lm_head=False)  # a scalar head, no LM
    ours_s = ours_seconds(cfg, tokens, args.repeats)
    import torch
    import trl
    checkpointing = peer_checkpointing(args.remat)
    peer_s = peer_seconds(cfg, tokens, args.repeats, devices, bf16=args.dtype == "bfloat16",
                          checkpointing=checkpointing)
    peak = matmul_peak(devices, args.dtype)
    ours_f, peer_f = flops / ours_s, flops / peer_s
    print(f"config: {args.model} reward model, {args.pairs} pairs x {args.length} tokens, "
          f"{args.dtype} compute / float32 weights, AdamW; ours remat={args.remat} attention="
          f"{args.attention}, TRL gradient_checkpointing={checkpointing}; {flops / 1e9:.3g} GFLOP "
          f"per step; {devices.describe()}")
    print(f"ours (jax {jax.__version__}): {ours_s:.3f} s/step, {args.pairs / ours_s:.2f} pairs/s, "
          f"{fmt_flops(ours_f)}, MFU {ours_f / peak.ours:.2f}")
    print(f"peer (trl {trl.__version__} RewardTrainer, torch {torch.__version__}): {peer_s:.3f} "
          f"s/step, {args.pairs / peer_s:.2f} pairs/s, {fmt_flops(peer_f)}, "
          f"MFU {peer_f / peak.peer:.2f}")
    print(peak.describe())
    report("reward_step", peer_s / ours_s, device=devices.jax, dtype=args.dtype, model=args.model,
           peer_device=devices.torch, remat=args.remat, peer_checkpointing=checkpointing,
           ours_pairs_s=args.pairs / ours_s, peer_pairs_s=args.pairs / peer_s,
           ours_tflop_s=ours_f / 1e12, peer_tflop_s=peer_f / 1e12, peak_tflop_s=peak.ours / 1e12,
           ours_mfu=ours_f / peak.ours, peer_mfu=peer_f / peak.peer)


if __name__ == "__main__":
    main()
