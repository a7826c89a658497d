"""Shared benchmark helpers: timing, a matmul FLOP/s ceiling, the machine-readable last line."""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


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


def matmul_peak_flops(n: int = 2048, dtype=jnp.float32) -> dict[str, float]:
    """FLOP/s of a large n×n matmul in JAX and in PyTorch (if installed), measured now."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    mm = jax.jit(jnp.matmul)
    out = {"jax": 2 * n**3 / time_fn(lambda: mm(a, b).block_until_ready(), repeats=5)}
    try:
        import torch
    except ImportError:
        return out
    ta, tb = torch.from_numpy(np.asarray(a)), torch.from_numpy(np.asarray(b))
    out["torch"] = 2 * n**3 / time_fn(lambda: torch.matmul(ta, tb), repeats=5)
    return out


def report(name: str, ratio: float, **fields) -> None:
    """Print the last line: `<name>: ratio=<ours/peer> key=value ...`."""
    parts = [f"{name}: ratio={ratio:.2f}"]
    for key, value in fields.items():
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    print(" ".join(parts), flush=True)
