"""Forward-pass throughput of a random model: rlhf_jax vs transformers (PyTorch).

Both run the same config (`--model`, GPT-2-small by default: 12 layers, 768 wide, 50257 vocab)
on the same batch (B=8, T=256 by default), both storing and computing in `--dtype` (float32 by
default), on `--device` (see `_common`), in this process. `--attention` picks our kernel; the
peer uses transformers' default (sdpa). Prints tokens/s, achieved FLOP/s and MFU: its fraction of
a large matmul's FLOP/s measured here (bfloat16 4096³ on a GPU; the run's dtype at 2048³ on the
CPU).
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from _common import (add_common_args, check_attention, fmt_flops, forward_flops, matmul_peak,
                     model_config, report, select_devices, time_fn)
from rlhf_jax.models import DecoderModel, config_to_hf, init_params


def ours_seconds(cfg, tokens, repeats):
    model = DecoderModel(cfg)
    params = init_params(model, jax.random.key(0))
    fwd = jax.jit(lambda p, t: model.apply({"params": p}, t).logits)
    tok = jnp.asarray(tokens)
    return time_fn(lambda: fwd(params, tok).block_until_ready(), repeats=repeats)


def peer_seconds(cfg, tokens, repeats, devices, dtype):
    """Seconds per forward of transformers' model and its attention implementation."""
    import torch
    import transformers

    with torch.device(devices.torch):  # random init on the device (fast for the 1.1B model)
        hf = transformers.AutoModelForCausalLM.from_config(config_to_hf(cfg))
    hf = hf.to(dtype=getattr(torch, dtype)).eval()
    ids = torch.from_numpy(tokens.astype(np.int64)).to(devices.torch)

    def peer():
        with torch.inference_mode():
            hf(input_ids=ids).logits
        devices.sync()
    return time_fn(peer, repeats=repeats), hf.config._attn_implementation


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    add_common_args(parser, attention=True)
    args = parser.parse_args()
    devices = select_devices(args.device)
    check_attention(args.attention, devices, args.dtype)
    cfg = model_config(args.model, args.dtype, attention=args.attention)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.length),
                                               dtype=np.int32)
    flops = forward_flops(cfg, args.batch, args.length)
    ours_s = ours_seconds(cfg, tokens, args.repeats)
    peer_s, peer_attention = peer_seconds(cfg, tokens, args.repeats, devices, args.dtype)
    import torch
    import transformers
    peak = matmul_peak(devices, args.dtype)
    n_tok = args.batch * args.length
    ours_f, peer_f = flops / ours_s, flops / peer_s
    print(f"config: {args.model} B={args.batch} T={args.length} {args.dtype}, attention "
          f"ours {args.attention}, peer {peer_attention}; "
          f"{flops / 1e9:.3g} GFLOP per forward; {devices.describe()}")
    print(f"ours (jax {jax.__version__}): {ours_s * 1e3:.1f} ms, {n_tok / ours_s:,.0f} tok/s, "
          f"{fmt_flops(ours_f)}, MFU {ours_f / peak.ours:.2f}")
    print(f"peer (transformers {transformers.__version__}, torch {torch.__version__}): "
          f"{peer_s * 1e3:.1f} ms, {n_tok / peer_s:,.0f} tok/s, {fmt_flops(peer_f)}, "
          f"MFU {peer_f / peak.peer:.2f}")
    print(peak.describe())
    report("forward", peer_s / ours_s, device=devices.jax, dtype=args.dtype, model=args.model,
           peer_device=devices.torch, ours_tok_s=n_tok / ours_s, peer_tok_s=n_tok / peer_s,
           ours_tflop_s=ours_f / 1e12, peer_tflop_s=peer_f / 1e12,
           peak_tflop_s=peak.ours / 1e12, ours_mfu=ours_f / peak.ours,
           peer_mfu=peer_f / peak.peer)


if __name__ == "__main__":
    main()
