"""Sampling throughput on a random GPT-2-small model: rlhf_jax vs transformers' `generate`.

Same config, same batch (B=16, prompt 32, 64 new tokens, temperature 1, no top-k/top-p, no EOS so
both produce every token), float32 by default (`--dtype bfloat16` stores and computes both models
in bfloat16), measured in this process on `--device` (auto: ours on JAX's default backend, the
PyTorch peer on CUDA when torch sees a GPU; see `_common`). `--model llama-1.1b` swaps in a
random 1.1B Llama (TinyLlama-1.1B's shape). Also prints ms per
decode step against the memory-bandwidth bound: (parameter + KV-cache bytes per step) / copy
bandwidth.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from _common import add_common_args, model_config, report, select_devices, time_fn
from rlhf_jax.models import DecoderModel, config_to_hf, init_params
from rlhf_jax.sampling import SamplingConfig, generate, kv_cache_bytes

def copy_bandwidth(nbytes: int = 512 * 2**20) -> float:
    """Bytes/s moved (read + write) by a large array copy: XLA's on an accelerator, else the better
    of XLA and numpy."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    copy = jax.jit(lambda a: a + 1.0)
    xla = time_fn(lambda: copy(x).block_until_ready(), repeats=5)
    if jax.default_backend() != "cpu":  # the model lives in accelerator memory
        return 2 * nbytes / xla
    src, dst = np.ones(nbytes // 4, np.float32), np.empty(nbytes // 4, np.float32)
    numpy = time_fn(lambda: np.copyto(dst, src), repeats=5)
    return 2 * nbytes / min(xla, numpy)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    add_common_args(parser)
    args = parser.parse_args()
    devices = select_devices(args.device)
    cfg = model_config(args.model, args.dtype)
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, cfg.vocab_size, (args.batch, args.prompt), dtype=np.int32)
    mask = np.ones_like(prompts)
    mask[: args.batch // 2, : args.prompt // 4] = 0  # half the rows left-padded
    n_new = args.batch * args.new

    params = init_params(DecoderModel(cfg), jax.random.key(0))
    sampling = SamplingConfig(max_new_tokens=args.new, temperature=1.0)
    pj, mj = jnp.asarray(prompts), jnp.asarray(mask)
    calls = iter(range(10**6))

    def ours():
        out = generate(params, pj, mj, jax.random.key(next(calls)), config=cfg, sampling=sampling)
        out.tokens.block_until_ready()
        assert int(out.num_steps) == args.new

    ours_s = time_fn(ours, repeats=args.repeats)
    # Decode-step time alone: the same program with 1 new token isolates prefill.
    one = SamplingConfig(max_new_tokens=1, temperature=1.0)
    prefill_s = time_fn(lambda: generate(params, pj, mj, jax.random.key(0), config=cfg,
                                         sampling=one).tokens.block_until_ready(),
                        repeats=args.repeats)
    step_ms = (ours_s - prefill_s) / (args.new - 1) * 1e3
    print(f"ours measured: {ours_s:.3f} s per call, decode step {step_ms:.2f} ms", flush=True)

    import torch
    import transformers
    device = devices.torch
    torch_dtype = getattr(torch, args.dtype)
    with torch.device(device):  # random init directly on the device (fast for the 1.1B model)
        hf = transformers.AutoModelForCausalLM.from_config(config_to_hf(cfg))
    hf = hf.to(device=device, dtype=torch_dtype).eval()
    ids = torch.from_numpy(prompts.astype(np.int64)).to(device)
    am = torch.from_numpy(mask.astype(np.int64)).to(device)

    def peer():
        with torch.inference_mode():
            out = hf.generate(input_ids=ids, attention_mask=am, max_new_tokens=args.new,
                              min_new_tokens=args.new, do_sample=True, temperature=1.0, top_k=0,
                              top_p=1.0, pad_token_id=0, eos_token_id=None)
        devices.sync()
        assert out.shape[1] == args.prompt + args.new

    peer_s = time_fn(peer, repeats=args.repeats)
    bw = copy_bandwidth()
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    step_bytes = param_bytes + kv_cache_bytes(cfg, args.batch, args.prompt, args.new)
    bound_ms = step_bytes / bw * 1e3
    print(f"config: {args.model} B={args.batch} prompt={args.prompt} new={args.new} {args.dtype}, "
          f"sampling T=1; {devices.describe()}")
    print(f"ours (jax {jax.__version__}): {ours_s:.2f} s, {n_new / ours_s:,.1f} new tok/s; "
          f"prefill {prefill_s * 1e3:.0f} ms, decode step {step_ms:.1f} ms")
    print(f"peer (transformers {transformers.__version__} generate, torch {torch.__version__}): "
          f"{peer_s:.2f} s, {n_new / peer_s:,.1f} new tok/s")
    print(f"memory bound: {step_bytes / 2**20:.0f} MiB per step (params + KV cache) at "
          f"{bw / 1e9:.1f} GB/s copy bandwidth = {bound_ms:.1f} ms; step/bound = "
          f"{step_ms / bound_ms:.2f}")
    report("generate", peer_s / ours_s, device=devices.jax, dtype=args.dtype, model=args.model,
           peer_device=device, ours_tok_s=n_new / ours_s, peer_tok_s=n_new / peer_s,
           step_ms=step_ms, bound_ms=bound_ms, bound_frac=bound_ms / step_ms)


if __name__ == "__main__":
    main()
