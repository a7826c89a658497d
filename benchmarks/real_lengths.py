"""SFT and reward steps on real-length data: length buckets and packing against padding every
row to the maximum, and TRL's SFTTrainer with packing as the peer.

Lengths are long-tailed as chat data are: log-normal with a median of `--median` tokens (200)
and σ = 0.8, clipped to [8, `--max-len`] (1024); reward pairs draw a prompt and two responses
of half those lengths (a pair's sequence is at most `--max-len`). The same token ids go to
every setting; throughput counts real (non-padding) tokens per second of step time:

  sft pad-to-max   every example alone in a row of `--max-len` tokens, `--batch` rows a step;
  sft packed       examples packed first-fit into rows of `--max-len` (`data.pack_rows`), with
                   segment ids keeping them apart (`data.sft`), `--batch` rows a step;
  sft bucketed     batches of similar length padded to the rung of their longest
                   (`data.BucketedBatches`, four rungs halving from the maximum);
  reward pad-to-max / bucketed   Bradley–Terry steps on `--pairs` pairs a step, prompt and
                   responses padded to the maximum, or to their (prompt, response) rungs;
  peer             TRL's SFTTrainer, `packing=True` (best-fit decreasing, padding-free: the
                   packed rows of a batch flattened into one sequence, position ids restarting
                   per example), the same examples, `--batch` rows a step, AdamW, no
                   gradient checkpointing, on the CPU.

Every setting of ours compiles each of its shapes before it is timed (a bucketed run compiles
one step per shape; their count is printed); the step times are summed over one pass of the
examples. TRL's first step is left out of its time (its warm-up). Both sides train the same
model config (`--model`, GPT-2-small by default; `tiny-gpt2` for a smoke run) in float32.

Last line: `real_lengths: ratio=<ours packed tokens/s ÷ ours pad-to-max tokens/s>
peer_ratio=<ours packed ÷ TRL packed tokens/s> …`, with the reward step's bucketed ratio too.
"""
import argparse
import gc
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from _common import add_common_args, model_config, report, select_devices, trainer_step_timer
from rlhf_jax import data, losses
from rlhf_jax.data.buckets import LengthSource, ladder, pack_rows, plan_epoch
from rlhf_jax.data.preference import PAD
from rlhf_jax.data.sft import packed_row, sft_arrays
from rlhf_jax.models import DecoderModel, config_to_hf, init_params
from rlhf_jax.reward import RewardLossConfig, make_reward_loss
from rlhf_jax.train import OptimizerConfig, create_train_state, make_optimizer, make_train_step


def lengths(rng, n: int, median: float, max_len: int) -> np.ndarray:
    """Log-normal lengths (σ 0.8) with the given median, clipped to [8, max_len]; the longest
    is set to `max_len` (the tail reaches the limit, as in real data)."""
    out = np.clip(np.round(median * np.exp(0.8 * rng.standard_normal(n))), 8,
                  max_len).astype(int)
    out[np.argmax(out)] = max_len
    return out


def _optimizer(params):
    return make_optimizer(OptimizerConfig(learning_rate=1e-5, weight_decay=0.0, clip_norm=1.0,
                                          total_steps=1000, schedule="constant"), params)


def time_pass(step, state, batches) -> tuple[float, int]:
    """Compile every shape of `batches` (untimed), then the summed seconds of one pass and the
    number of shapes."""
    shapes = {}
    for b in batches:
        key = tuple(jax.tree.leaves(jax.tree.map(lambda x: x.shape, b)))
        if key not in shapes:
            shapes[key] = b
    holder = [state]
    for b in shapes.values():  # compile (and run once) each shape
        holder[0], m = step(holder[0], b)
        jax.block_until_ready(m)
    total = 0.0
    for b in batches:
        start = time.perf_counter()
        holder[0], m = step(holder[0], b)
        jax.block_until_ready(m)
        total += time.perf_counter() - start
    return total, len(shapes)


def sft_runs(cfg, examples, batch: int, max_len: int) -> dict:
    """Seconds of one pass of our SFT step over the examples in each layout."""
    model = DecoderModel(cfg)
    params = init_params(model, jax.random.key(0))
    tx = _optimizer(params)

    def sum_loss(p, b, rng):
        out = model.apply({"params": p}, b["tokens"], b["mask"], b.get("positions"),
                          segment_ids=b.get("segment_ids"))
        targets = losses.next_token_targets(b["mask"]) * b["loss_mask"]
        total, count = losses.model_nll_sum(out, p, cfg, b["tokens"], targets)
        return total, (count, {"train/nll": total})

    step = jax.jit(make_train_step(sum_loss, tx), donate_argnums=0)
    stored = []
    for ids in examples:
        row = np.full(max_len, PAD, np.int32)
        row[-len(ids):] = ids
        stored.append({"tokens": row, "loss": (row != PAD).astype(np.int32)})
    n = len(examples)
    lens = np.array([len(e) for e in examples])
    as_jnp = lambda b: {k: jnp.asarray(v) for k, v in b.items()}  # noqa: E731
    padded = [as_jnp(sft_arrays(np.stack([s["tokens"] for s in stored[i:i + batch]]),
                                np.stack([s["loss"] for s in stored[i:i + batch]]), 0))
              for i in range(0, n - n % batch, batch)]
    rows = pack_rows(lens, np.arange(n), max_len)
    packed = [[packed_row([stored[i] for i in r], max_len, 0) for r in rows[i:i + batch]]
              for i in range(0, len(rows), batch)]
    packed[-1] += [packed_row([], max_len, 0)] * (batch - len(packed[-1]))
    packed = [as_jnp({k: np.stack([r[k] for r in b]) for k in b[0]}) for b in packed]
    src = LengthSource(stored, lens, (ladder(max_len),))
    bucketed = []
    for idx in plan_epoch(src, batch, seed=0, epoch=0, shuffle=True, drop_remainder=True):
        (length,) = src.shape_of(idx)
        bucketed.append(as_jnp(sft_arrays(np.stack([stored[i]["tokens"][-length:] for i in idx]),
                                          np.stack([stored[i]["loss"][-length:] for i in idx]),
                                          0)))
    out = {}
    for name, batches, tokens in (
            ("pad-to-max", padded, int(lens[:n - n % batch].sum())),
            ("packed", packed, int(lens.sum())),
            ("bucketed", bucketed, int(sum(lens[i].sum() for i in plan_epoch(
                src, batch, seed=0, epoch=0, shuffle=True, drop_remainder=True))))):
        state = create_train_state(jax.tree.map(jnp.copy, params), tx, 0)  # steps donate it
        seconds, shapes = time_pass(step, state, batches)
        out[name] = {"seconds": seconds, "tokens": tokens, "steps": len(batches),
                     "shapes": shapes, "rows": sum(int(b["tokens"].shape[0]) for b in batches)}
    out["packed"]["examples_per_row"] = n / len(rows)
    return out


def reward_runs(cfg, pairs_ids, pairs: int, max_len: int) -> dict:
    """Seconds of one pass of our reward step, padded to the maximum and bucketed."""
    model = DecoderModel(cfg, heads=("reward",))
    params = init_params(model, jax.random.key(1))
    tx = _optimizer(params)
    step = jax.jit(make_train_step(make_reward_loss(model, RewardLossConfig()), tx),
                   donate_argnums=0)
    half = max_len // 2
    stored = []
    for prompt, chosen, rejected in pairs_ids:
        p = np.full(half, PAD, np.int32)
        p[-len(prompt):] = prompt
        r = np.full((2, half), PAD, np.int32)
        r[0, :len(chosen)], r[1, :len(rejected)] = chosen, rejected
        stored.append({"prompt": p, "responses": r, "ranks": np.array([0, 1], np.int32),
                       "rating": np.float32(0), "has_rating": np.int32(0),
                       "annotator": np.int32(-1), "confidence": np.float32(1)})
    lens = np.array([[len(p), max(len(c), len(r))] for p, c, r in pairs_ids])
    src = LengthSource(stored, lens, (ladder(half), ladder(half)))
    n = len(stored)
    full = [data.preference.bucketed_batch(stored, np.arange(i, i + pairs), (half, half),
                                           num_responses=2, pad_id=0)
            for i in range(0, n - n % pairs, pairs)]
    bucketed = [data.preference.bucketed_batch(stored, idx, src.shape_of(idx), num_responses=2,
                                               pad_id=0)
                for idx in plan_epoch(src, pairs, seed=0, epoch=0, shuffle=True,
                                      drop_remainder=True)]
    out = {}
    for name, batches in (("pad-to-max", full), ("bucketed", bucketed)):
        batches = [jax.tree.map(jnp.asarray, b) for b in batches]
        seconds, shapes = time_pass(
            step, create_train_state(jax.tree.map(jnp.copy, params), tx, 0), batches)
        tokens = int(sum(int(np.asarray(b.mask).sum()) for b in batches))
        out[name] = {"seconds": seconds, "tokens": tokens, "steps": len(batches),
                     "shapes": shapes}
    return out


def peer_sft(cfg, examples, batch: int, max_len: int, devices) -> dict:
    """TRL's SFTTrainer with packing (bfd, padding-free) over the same token ids: seconds and
    real tokens of every step after the first."""
    import datasets
    import torch
    import transformers
    from tokenizers import Tokenizer, models
    from trl import SFTConfig, SFTTrainer

    hf_cfg = config_to_hf(cfg)
    with torch.device(devices.torch):
        model = transformers.AutoModelForCausalLM.from_config(hf_cfg).float()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, "<unk>")),
        pad_token="<pad>", eos_token="<pad>")
    ds = datasets.Dataset.from_dict({"input_ids": [list(map(int, e)) for e in examples]})
    timer, times = trainer_step_timer(devices)
    counted = []

    class Tokens(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            counted.append(state.num_input_tokens_seen)

    args = SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch,
                     num_train_epochs=1, learning_rate=1e-5, max_grad_norm=1.0,
                     logging_steps=10**6, save_strategy="no", report_to=[],
                     use_cpu=not devices.cuda, max_length=max_len,
                     packing=True, dataloader_num_workers=0, disable_tqdm=True, bf16=False,
                     fp16=False, gradient_checkpointing=False,
                     include_num_input_tokens_seen=True, eos_token=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                         callbacks=[timer, Tokens()])
    trainer.train()
    seen = np.diff([0] + counted)
    return {"seconds": float(sum(times[1:])), "tokens": int(seen[1:].sum()),
            "steps": len(times), "first_step": times[0] if times else float("nan")}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=32, help="SFT examples")
    parser.add_argument("--pairs", type=int, default=2, help="reward pairs a step")
    parser.add_argument("--pair-count", type=int, default=8, help="reward pairs in all")
    parser.add_argument("--batch", type=int, default=2, help="SFT rows a step")
    parser.add_argument("--median", type=float, default=200.0)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--skip-peer", action="store_true", help="ours only (no TRL)")
    add_common_args(parser)
    args = parser.parse_args()
    devices = select_devices(args.device)
    cfg = model_config(args.model, args.dtype, param_dtype="float32")
    rng = np.random.default_rng(0)
    lens = lengths(rng, args.examples, args.median, args.max_len)
    examples = [rng.integers(2, cfg.vocab_size, n) for n in lens]
    half = args.max_len // 2
    pair_lens = lengths(rng, 3 * args.pair_count, args.median / 2, half).reshape(-1, 3)
    pairs_ids = [tuple(rng.integers(2, cfg.vocab_size, n) for n in row) for row in pair_lens]
    print(f"config: {args.model}, float32; SFT: {args.examples} examples, lengths median "
          f"{np.median(lens):.0f}, mean {lens.mean():.0f}, max {lens.max()} of {args.max_len}; "
          f"{args.batch} rows a step. Reward: {args.pair_count} pairs, {args.pairs} a step; "
          f"{devices.describe()}", flush=True)
    sft = sft_runs(cfg, examples, args.batch, args.max_len)
    gc.collect()  # the SFT model and its optimiser state go before the reward model comes
    for name, r in sft.items():
        print(f"ours sft {name}: {r['steps']} steps, {r['shapes']} shape(s), "
              f"{r['seconds']:.2f} s, {r['tokens'] / r['seconds']:.1f} tokens/s"
              + (f", {r['examples_per_row']:.2f} examples per row" if "examples_per_row" in r
                 else ""), flush=True)
    rm = reward_runs(cfg, pairs_ids, args.pairs, args.max_len)
    for name, r in rm.items():
        print(f"ours reward {name}: {r['steps']} steps, {r['shapes']} shape(s), "
              f"{r['seconds']:.2f} s, {r['tokens'] / r['seconds']:.1f} tokens/s", flush=True)
    tps = {k: v["tokens"] / v["seconds"] for k, v in sft.items()}
    rm_tps = {k: v["tokens"] / v["seconds"] for k, v in rm.items()}
    fields = dict(ours_packed_tok_s=tps["packed"], ours_bucketed_tok_s=tps["bucketed"],
                  ours_pad_tok_s=tps["pad-to-max"],
                  bucketed_ratio=tps["bucketed"] / tps["pad-to-max"],
                  reward_ratio=rm_tps["bucketed"] / rm_tps["pad-to-max"],
                  reward_bucketed_tok_s=rm_tps["bucketed"], reward_pad_tok_s=rm_tps["pad-to-max"])
    peer_ratio = float("nan")
    if not args.skip_peer:
        import trl
        peer = peer_sft(cfg, examples, args.batch, args.max_len, devices)
        peer_tps = peer["tokens"] / peer["seconds"] if peer["seconds"] else float("nan")
        print(f"peer (trl {trl.__version__} SFTTrainer, packing bfd / padding-free): "
              f"{peer['steps']} steps ({peer['first_step']:.2f} s warm-up step left out), "
              f"{peer['seconds']:.2f} s, {peer_tps:.1f} tokens/s", flush=True)
        peer_ratio = tps["packed"] / peer_tps
        fields["peer_tok_s"] = peer_tps
    report("real_lengths", tps["packed"] / tps["pad-to-max"], device=devices.jax,
           dtype=args.dtype, model=args.model, peer_ratio=peer_ratio, **fields)


if __name__ == "__main__":
    main()
