"""Reward-model train step on a random GPT-2-small: rlhf_jax vs TRL's RewardTrainer (PyTorch).

Same config, 8 preference pairs of 128 tokens, float32, Bradley–Terry loss and AdamW on both
sides, measured in this process. Prints pairs/s, achieved FLOP/s and its fraction of a large f32
matmul's FLOP/s measured here (the better of JAX and PyTorch).
"""
import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from _common import matmul_peak_flops, report, time_fn
from rlhf_jax.data import PreferenceBatch
from rlhf_jax.models import DecoderModel, config_to_hf, init_params, preset
from rlhf_jax.reward import RewardLossConfig, make_reward_loss
from rlhf_jax.train import OptimizerConfig, create_train_state, make_optimizer, make_train_step


def train_flops(cfg, sequences: int, length: int) -> float:
    """≈ 3 × forward matmul FLOPs (backward costs two forwards); no LM head in a reward model."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    per_token = 2 * cfg.num_layers * (4 * d * d + 2 * d * f) + 4 * cfg.num_layers * length * d
    return 3 * sequences * length * per_token


def ours_seconds(cfg, tokens, repeats):
    model = DecoderModel(cfg, heads=("reward",))
    params = init_params(model, jax.random.key(0))
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-5, weight_decay=0.0, clip_norm=1.0,
                                        total_steps=1000, schedule="constant"), params)
    state = create_train_state(params, tx, 0)
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
    return time_fn(run, warmup=1, repeats=repeats)


def peer_seconds(cfg, tokens, repeats):
    import datasets
    import transformers
    from trl import RewardConfig, RewardTrainer

    hf_cfg = config_to_hf(cfg)
    hf_cfg.num_labels, hf_cfg.pad_token_id = 1, cfg.vocab_size - 1
    model = transformers.GPT2ForSequenceClassification(hf_cfg).float()
    from tokenizers import Tokenizer, models
    # the collator pads with this tokenizer's pad id; the sequences need no padding
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, "<unk>")),
        pad_token="<pad>")
    n = tokens.shape[0] * (repeats + 2)
    rows = np.concatenate([tokens] * (repeats + 2))
    ds = datasets.Dataset.from_dict({"chosen_ids": rows[:, 0].tolist(),
                                     "rejected_ids": rows[:, 1].tolist()})
    times, start = [], [0.0]

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            start[0] = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - start[0])

    args = RewardConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=tokens.shape[0],
                        max_steps=repeats + 2, learning_rate=1e-5, max_grad_norm=1.0,
                        logging_steps=10**6, save_strategy="no", report_to=[], use_cpu=True,
                        max_length=None, dataloader_num_workers=0, disable_tqdm=True,
                        center_rewards_coefficient=None, bf16=False, fp16=False)
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                            callbacks=[Timer()])
    assert len(ds) == n
    trainer.train()
    return statistics.median(times[2:])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = preset("gpt2-small")
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size - 1, (args.pairs, 2, args.length), dtype=np.int32)
    flops = train_flops(cfg, 2 * args.pairs, args.length)
    ours_s = ours_seconds(cfg, tokens, args.repeats)
    import torch
    import trl
    peer_s = peer_seconds(cfg, tokens, args.repeats)
    peak = max(matmul_peak_flops().values())
    print(f"config: gpt2-small reward model, {args.pairs} pairs x {args.length} tokens, float32, "
          f"AdamW; {flops / 1e9:.0f} GFLOP per step; torch threads={torch.get_num_threads()}")
    print(f"ours (jax {jax.__version__}): {ours_s:.2f} s/step, {args.pairs / ours_s:.2f} pairs/s, "
          f"{flops / ours_s / 1e9:.1f} GFLOP/s")
    print(f"peer (trl {trl.__version__} RewardTrainer, torch {torch.__version__}): {peer_s:.2f} "
          f"s/step, {args.pairs / peer_s:.2f} pairs/s, {flops / peer_s / 1e9:.1f} GFLOP/s")
    report("reward_step", peer_s / ours_s, ours_pairs_s=args.pairs / ours_s,
           peer_pairs_s=args.pairs / peer_s, ours_gflop_s=flops / ours_s / 1e9,
           peak_gflop_s=peak / 1e9, peak_frac=flops / ours_s / peak, device=jax.default_backend())


if __name__ == "__main__":
    main()
