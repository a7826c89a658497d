"""Shared benchmark helpers: devices, model sizes, FLOP counts, a matmul ceiling measured in the
same run (for MFU), timing, and the machine-readable last line.

Every script takes `--device {auto,cpu,gpu}`: auto runs ours on JAX's default backend and the
PyTorch peer on CUDA when torch sees a GPU; cpu forces both onto the CPU; gpu requires both on the
GPU and stops with a message otherwise. `--dtype` and `--model` pick the numerics and the size.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time

import jax
import jax.numpy as jnp

from rlhf_jax.models import REMAT_POLICIES, TransformerConfig, preset

MODELS = ("gpt2-small", "llama-1.1b", "tiny-gpt2", "tiny-llama")  # tiny-*: smoke tests
# TinyLlama-1.1B's shape (22 layers, width 2048, 32 query / 4 KV heads, SwiGLU 5632, vocab 32000).
LLAMA_1B = dict(model_type="llama", vocab_size=32000, hidden_size=2048, num_layers=22,
                num_heads=32, num_kv_heads=4, intermediate_size=5632,
                max_position_embeddings=2048, norm_eps=1e-5, qkv_bias=False, out_bias=False,
                mlp_bias=False, tie_word_embeddings=False, bos_token_id=1, eos_token_ids=(2,))
# The sizes the memory benchmarks compile: TinyLlama-1.1B's shape, Llama-3-8B's, and a smoke-test
# size (not part of their default runs).
LLAMA_SIZES = {
    "1b": LLAMA_1B,
    "8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, num_layers=32,
               num_heads=32, num_kv_heads=8, intermediate_size=14336,
               max_position_embeddings=8192, rope_theta=500000.0, norm_eps=1e-5,
               qkv_bias=False, out_bias=False, mlp_bias=False, tie_word_embeddings=False,
               bos_token_id=128000, eos_token_ids=(128001,)),
    "tiny": dict(model_type="llama", vocab_size=256, hidden_size=64, num_layers=2, num_heads=4,
                 num_kv_heads=2, intermediate_size=128, max_position_embeddings=1024,
                 qkv_bias=False, out_bias=False, mlp_bias=False, tie_word_embeddings=False),
}


def model_config(name: str, dtype: str = "float32", **overrides) -> TransformerConfig:
    """Our config for `--model`: compute in `dtype`; parameters stored in `dtype` too unless
    `param_dtype=` says otherwise (the training scripts keep float32 master weights)."""
    kwargs = {"dtype": dtype, "param_dtype": dtype, **overrides}
    if name == "llama-1.1b":
        return TransformerConfig(**{**LLAMA_1B, **kwargs})
    if name not in MODELS:
        raise ValueError(f"--model {name!r}: expected one of {MODELS}")
    return preset(name, **kwargs)


def add_common_args(parser, *, model: bool = True, default_model: str | None = "gpt2-small",
                    attention: bool = False, remat: bool = False) -> None:
    """`--device`, `--dtype` and (as asked) `--model`, `--attention`, `--remat`."""
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="auto: ours on JAX's default backend, the peer on CUDA when torch "
                             "sees a GPU; cpu: both on the CPU; gpu: both on the GPU or stop")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype of both sides")
    if model:
        parser.add_argument("--model", choices=MODELS, default=default_model)
    if attention:
        parser.add_argument("--attention", choices=("xla", "cudnn"), default="xla",
                            help="our attention kernel (cudnn: GPU and bfloat16 only); the peer "
                                 "uses transformers' default (sdpa)")
    if remat:
        parser.add_argument("--remat", choices=tuple(REMAT_POLICIES), default="none",
                            help="our rematerialisation policy; the peer's gradient "
                                 "checkpointing is on exactly when this is not 'none'")


@dataclasses.dataclass(frozen=True)
class Devices:
    """Where each side runs: `jax` is JAX's backend ("cpu", "gpu", "tpu"), `torch` is "cpu" or
    "cuda"."""

    jax: str
    torch: str

    @property
    def cuda(self) -> bool:
        return self.torch == "cuda"

    def sync(self) -> None:
        """Wait for the peer's queued GPU work (a no-op on the CPU)."""
        if self.cuda:
            import torch
            torch.cuda.synchronize()

    def describe(self) -> str:
        import torch
        ours = f"{self.jax} ({jax.devices()[0].device_kind})"
        peer = (f"cuda ({torch.cuda.get_device_name()}; float32 matmuls in TF32 on both sides, "
                "XLA's default)" if self.cuda else f"cpu, {torch.get_num_threads()} threads")
        return f"ours on {ours}, peer on {peer}"


def select_devices(choice: str) -> Devices:
    """Apply `--device` before JAX initialises its backends (call right after parsing).

    When both sides share a GPU, JAX allocates on demand instead of taking 75% of the memory up
    front (XLA_PYTHON_CLIENT_PREALLOCATE=false, unless set already), so the peer has room."""
    import torch

    cuda = torch.cuda.is_available() and choice != "cpu"
    if choice == "cpu":
        jax.config.update("jax_platforms", "cpu")
    elif cuda:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if choice == "cpu" and jax.default_backend() != "cpu":
        raise SystemExit("--device cpu: JAX was initialised before the flag could apply")
    if choice == "gpu":
        problems = []
        if jax.default_backend() != "gpu":
            problems.append(f"JAX {jax.__version__} runs on {jax.default_backend()} "
                            "(install jax[cuda12] or jax[cuda13])")
        if not cuda:
            problems.append(f"torch {torch.__version__} sees no CUDA device")
        if problems:
            raise SystemExit("--device gpu: " + "; ".join(problems))
    if cuda:  # XLA's default float32 GPU matmul uses TF32 tensor cores; let torch do the same
        torch.set_float32_matmul_precision("high")
    return Devices(jax=jax.default_backend(), torch="cuda" if cuda else "cpu")


def check_attention(attention: str, devices: Devices, dtype: str) -> None:
    if attention == "cudnn" and (devices.jax != "gpu" or dtype != "bfloat16"):
        raise SystemExit("--attention cudnn needs ours on a GPU and --dtype bfloat16")


def peer_checkpointing(remat: str) -> bool:
    """The peer's gradient checkpointing matches ours: on exactly when we rematerialise
    (transformers checkpoints whole layers, i.e. our "full"; "dots*" keep more)."""
    return remat != "none"


def time_fn(fn, *, warmup: int = 1, repeats: int = 3) -> float:
    """Median wall seconds of `fn()` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---- model FLOPs (matmuls only; the convention of MFU, Chowdhery et al. 2022, app. B) ----------

def trainer_step_timer(devices: Devices):
    """(callback, times): a transformers `TrainerCallback` that appends each optimiser step's
    seconds to `times`, syncing the device at both ends (the step's queued GPU work belongs to
    the step)."""
    import transformers

    times, start = [], [0.0]

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            devices.sync()
            start[0] = time.perf_counter()

        def on_step_end(self, *a, **k):
            devices.sync()
            times.append(time.perf_counter() - start[0])

    return Timer(), times


def matmul_params(cfg: TransformerConfig, *, lm_head: bool = True) -> int:
    """Weights that take part in a matmul per token: attention, MLP (3 matrices for SwiGLU), and
    the LM head (untied or tied) when asked."""
    d, hd = cfg.hidden_size, cfg.head_dim
    attn = d * (cfg.num_heads + 2 * cfg.num_kv_heads) * hd + cfg.num_heads * hd * d
    mlp = (2 if cfg.is_gpt2 else 3) * d * cfg.intermediate_size
    return cfg.num_layers * (attn + mlp) + (cfg.vocab_size * d if lm_head else 0)


def forward_flops(cfg: TransformerConfig, sequences: int, length: int, *,
                  lm_head: bool = True) -> float:
    """Matmul FLOPs of one forward over `sequences × length` tokens: 2 per weight per token plus
    attention's QKᵀ and PV, 4·layers·length·(heads·head_dim) per token (the full square, as is
    usual for MFU, although causal kernels skip half)."""
    attention = 4 * cfg.num_layers * length * cfg.num_heads * cfg.head_dim
    return sequences * length * (2 * matmul_params(cfg, lm_head=lm_head) + attention)


def train_flops(cfg: TransformerConfig, sequences: int, length: int, *,
                lm_head: bool = True) -> float:
    """3 × forward (the backward pass costs two forwards); rematerialisation's recomputation is
    not counted — MFU counts the model's FLOPs, not the hardware's."""
    return 3 * forward_flops(cfg, sequences, length, lm_head=lm_head)


# ---- the matmul ceiling ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Peak:
    """FLOP/s of a large square matmul measured now on each side's device, and how."""

    jax_flops: float
    jax_how: str
    torch_flops: float
    torch_how: str
    same_device: bool

    @property
    def ours(self) -> float:
        """Our MFU denominator: the better of JAX and PyTorch when both share the device."""
        return max(self.jax_flops, self.torch_flops) if self.same_device else self.jax_flops

    @property
    def peer(self) -> float:
        return max(self.jax_flops, self.torch_flops) if self.same_device else self.torch_flops

    def describe(self) -> str:
        return (f"matmul ceiling: jax {self.jax_how} {fmt_flops(self.jax_flops)}, torch "
                f"{self.torch_how} {fmt_flops(self.torch_flops)}; MFU is achieved / "
                + ("the better of the two" if self.same_device else "each side's own"))


def _matmul_setting(on_cpu: bool, dtype: str) -> tuple[int, str, int]:
    """(n, dtype, calls per timing): bfloat16 4096³ on an accelerator (its tensor-core peak);
    the run's own dtype at 2048³ on the CPU, where bfloat16 is no faster and would flatter us."""
    return (2048, dtype, 1) if on_cpu else (4096, "bfloat16", 10)


def matmul_peak(devices: Devices, dtype: str) -> Peak:
    """Measure the ceiling on JAX's device and on torch's, each in its `_matmul_setting`."""
    import numpy as np
    import torch

    n, jdt, calls = _matmul_setting(devices.jax == "cpu", dtype)
    a = jax.random.normal(jax.random.key(0), (n, n), jdt)
    b = jax.random.normal(jax.random.key(1), (n, n), jdt)
    mm = jax.jit(jnp.matmul)

    def run_jax():
        out = [mm(a, b) for _ in range(calls)]  # queued back to back: no dispatch gaps
        out[-1].block_until_ready()
    jax_flops = calls * 2 * n**3 / time_fn(run_jax, repeats=5)

    tn, tdt, tcalls = _matmul_setting(not devices.cuda, dtype)
    ta = torch.from_numpy(np.random.default_rng(0).standard_normal((tn, tn), np.float32))
    ta = ta.to(devices.torch, getattr(torch, tdt))
    tb = ta.T.contiguous()

    def run_torch():
        for _ in range(tcalls):
            torch.matmul(ta, tb)
        devices.sync()
    torch_flops = tcalls * 2 * tn**3 / time_fn(run_torch, repeats=5)
    return Peak(jax_flops, f"{devices.jax} {n}^3 {jdt}", torch_flops,
                f"{devices.torch} {tn}^3 {tdt}",
                same_device=(devices.jax == "cpu") == (not devices.cuda))


def fmt_flops(flops_per_s: float) -> str:
    return (f"{flops_per_s / 1e12:.1f} TFLOP/s" if flops_per_s >= 1e12
            else f"{flops_per_s / 1e9:.1f} GFLOP/s")


def report(name: str, ratio: float, *, device: str, dtype: str, **fields) -> None:
    """Print the last line: `<name>: ratio=<peer s / our s> device=… dtype=… key=value …`."""
    parts = [f"{name}: ratio={ratio:.2f}", f"device={device}", f"dtype={dtype}"]
    for key, value in fields.items():
        if isinstance(value, float):  # 4 significant digits, no exponent for large numbers
            value = f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
        parts.append(f"{key}={value}")
    print(" ".join(parts), flush=True)


# ---- abstract arguments for compile-only memory measurements (memory.py, lora_memory.py) ----

def shard_bytes(tree) -> int:
    """Bytes per device of a pytree of `ShapeDtypeStruct`s (the first shard of each sharded
    leaf)."""
    import math
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) else x.shape
        total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
    return total


def abstract_params(model, mesh, rules):
    """`model`'s parameters as `ShapeDtypeStruct`s in their shardings (nothing allocated)."""
    from rlhf_jax import models, sharding
    shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
    shs = sharding.param_shardings(shapes, models.logical_axes(model), mesh, rules)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shs)


def batch_struct(shape, dtype, mesh, rules):
    """A batch-sharded `ShapeDtypeStruct`."""
    from rlhf_jax import sharding
    return jax.ShapeDtypeStruct(shape, dtype,
                                sharding=sharding.batch_sharding(mesh, rules, len(shape)))


def preference_batch_struct(pairs: int, length: int, mesh, rules, *, prompt_len: int = 0,
                            index: bool = False):
    """An abstract `data.PreferenceBatch` of `pairs` pairs of `length` tokens."""
    from rlhf_jax import data

    def s(shape, dtype=jnp.int32):
        return batch_struct(shape, dtype, mesh, rules)
    b, t = pairs, length
    extra = {"index": s((b,))} if index else {}
    return data.PreferenceBatch(
        tokens=s((b, 2, t)), mask=s((b, 2, t)), ranks=s((b, 2)), valid=s((b, 2)),
        is_comparison=s((b,)), rating=s((b,), jnp.float32), has_rating=s((b,)),
        annotator=s((b,)), weight=s((b,), jnp.float32), prompt_len=prompt_len, **extra)
