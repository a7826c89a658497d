"""Forward-pass throughput of a random GPT-2-small model: rlhf_jax vs transformers (PyTorch).

Both run the same config (12 layers, 768 wide, 50257 vocab) on the same batch (B=8, T=256,
float32) in this process. Prints tokens/s, achieved FLOP/s and its fraction of a large f32
matmul's FLOP/s measured here (the better of JAX and PyTorch).
"""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from _common import matmul_peak_flops, report, time_fn
from rlhf_jax.models import DecoderModel, config_to_hf, init_params, preset


def forward_flops(cfg, batch: int, length: int) -> float:
    """Matmul FLOPs of one forward: 2·(per-token weight params)·tokens + attention 4·L·T·D."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    per_layer = d * 3 * d + d * d + 2 * d * f
    weights = cfg.num_layers * per_layer + cfg.vocab_size * d
    return batch * length * (2 * weights + 4 * cfg.num_layers * length * d)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = preset("gpt2-small")
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.length),
                                               dtype=np.int32)
    flops = forward_flops(cfg, args.batch, args.length)

    model = DecoderModel(cfg)
    params = init_params(model, jax.random.key(0))
    fwd = jax.jit(lambda p, t: model.apply({"params": p}, t).logits)
    tok = jnp.asarray(tokens)
    ours_s = time_fn(lambda: fwd(params, tok).block_until_ready(), repeats=args.repeats)

    import torch
    import transformers
    hf = transformers.GPT2LMHeadModel(config_to_hf(cfg)).float().eval()
    ids = torch.from_numpy(tokens.astype(np.int64))
    with torch.inference_mode():
        peer_s = time_fn(lambda: hf(input_ids=ids).logits, repeats=args.repeats)

    peak = matmul_peak_flops()
    peak_flops = max(peak.values())
    n_tok = args.batch * args.length
    print(f"config: gpt2-small B={args.batch} T={args.length} float32, {flops / 1e9:.1f} GFLOP "
          f"per forward; torch threads={torch.get_num_threads()}, cpus={os.cpu_count()}")
    print(f"ours (jax {jax.__version__}): {ours_s * 1e3:.1f} ms, {n_tok / ours_s:,.0f} tok/s, "
          f"{flops / ours_s / 1e9:.1f} GFLOP/s")
    print(f"peer (transformers {transformers.__version__}, torch {torch.__version__}): "
          f"{peer_s * 1e3:.1f} ms, {n_tok / peer_s:,.0f} tok/s, {flops / peer_s / 1e9:.1f} GFLOP/s")
    print("f32 matmul 2048^3: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peak.items()))
    report("forward", peer_s / ours_s, ours_tok_s=n_tok / ours_s, peer_tok_s=n_tok / peer_s,
           ours_gflop_s=flops / ours_s / 1e9, peer_gflop_s=flops / peer_s / 1e9,
           peak_gflop_s=peak_flops / 1e9, peak_frac=flops / ours_s / peak_flops,
           device=jax.default_backend())


if __name__ == "__main__":
    main()
