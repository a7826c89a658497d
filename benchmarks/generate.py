"""Sampling throughput on a random GPT-2-small model: rlhf_jax vs transformers' `generate`.

Same config, same batch (B=16, prompt 32, 64 new tokens, temperature 1, no top-k/top-p, no EOS so
both produce every token), float32 by default (`--dtype bfloat16` stores and computes both models
in bfloat16), measured in this process; the PyTorch peer runs on CUDA when torch sees a GPU.
`--model llama-1.1b` swaps in a random 1.1B Llama (TinyLlama-1.1B's shape). Also prints ms per
decode step against the memory-bandwidth bound: (parameter + KV-cache bytes per step) / copy
bandwidth.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from _common import report, time_fn
from rlhf_jax.models import DecoderModel, TransformerConfig, config_to_hf, init_params, preset
from rlhf_jax.sampling import SamplingConfig, generate, kv_cache_bytes

# TinyLlama-1.1B's shape (22 layers, width 2048, 32 query / 4 KV heads, SwiGLU 5632, vocab 32000).
LLAMA_1B = dict(model_type="llama", vocab_size=32000, hidden_size=2048, num_layers=22,
                num_heads=32, num_kv_heads=4, intermediate_size=5632,
                max_position_embeddings=2048, norm_eps=1e-5, qkv_bias=False, out_bias=False,
                mlp_bias=False, tie_word_embeddings=False, bos_token_id=1, eos_token_ids=(2,))


def model_config(name: str, dtype: str) -> TransformerConfig:
    """Our config for `--model`, with parameters stored and computed in `dtype`."""
    if name == "llama-1.1b":
        return TransformerConfig(**LLAMA_1B, dtype=dtype, param_dtype=dtype)
    return preset(name, dtype=dtype, param_dtype=dtype)


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
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="parameter and compute dtype of both models")
    parser.add_argument("--model", choices=("gpt2-small", "llama-1.1b"), default="gpt2-small")
    args = parser.parse_args()
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
    device = "cuda" if torch.cuda.is_available() else "cpu"
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
        if device == "cuda":
            torch.cuda.synchronize()
        assert out.shape[1] == args.prompt + args.new

    peer_s = time_fn(peer, repeats=args.repeats)
    bw = copy_bandwidth()
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    step_bytes = param_bytes + kv_cache_bytes(cfg, args.batch, args.prompt, args.new)
    bound_ms = step_bytes / bw * 1e3
    print(f"config: {args.model} B={args.batch} prompt={args.prompt} new={args.new} {args.dtype}, "
          f"sampling T=1; torch device={device} threads={torch.get_num_threads()}")
    print(f"ours (jax {jax.__version__}): {ours_s:.2f} s, {n_new / ours_s:,.1f} new tok/s; "
          f"prefill {prefill_s * 1e3:.0f} ms, decode step {step_ms:.1f} ms")
    print(f"peer (transformers {transformers.__version__} generate, torch {torch.__version__}): "
          f"{peer_s:.2f} s, {n_new / peer_s:,.1f} new tok/s")
    print(f"memory bound: {step_bytes / 2**20:.0f} MiB per step (params + KV cache) at "
          f"{bw / 1e9:.1f} GB/s copy bandwidth = {bound_ms:.1f} ms; step/bound = "
          f"{step_ms / bound_ms:.2f}")
    report("generate", peer_s / ours_s, ours_tok_s=n_new / ours_s, peer_tok_s=n_new / peer_s,
           step_ms=step_ms, bound_ms=bound_ms, bound_frac=bound_ms / step_ms,
           device=jax.default_backend())


if __name__ == "__main__":
    main()
