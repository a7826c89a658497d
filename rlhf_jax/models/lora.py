"""Low-rank adapters on a parameter tree: which leaves train, and merging.

The adapters themselves live in `layers.Proj` (leaves "lora_a" [in..., r] and "lora_b"
[r, out...] beside each adapted "kernel"). This module works on the parameter tree: it picks
the adapter leaves, freezes the base, and merges W + s·A·B into plain kernels (Hu et al. 2022,
§4.1: no inference latency). `models.peft_io` reads and writes the adapter alone in PEFT's
format.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from rlhf_jax.models.config import TransformerConfig

ADAPTER_LEAVES = ("lora_a", "lora_b")


def is_adapter(path: str) -> bool:
    """True for an adapter leaf path ("…/lora_a", "…/lora_b")."""
    return path.rsplit("/", 1)[-1] in ADAPTER_LEAVES


def _filter(tree: Any, keep: Callable[[str], bool], prefix: str = "") -> Any:
    if not isinstance(tree, dict):
        return tree
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            sub = _filter(v, keep, path)
            if sub:
                out[k] = sub
        elif keep(path):
            out[k] = v
    return out


def adapter_params(params: Any) -> dict:
    """Only the adapter leaves of `params` (nested dicts; empty when there are none)."""
    return _filter(params, is_adapter)


def strip_adapters(params: Any) -> dict:
    """`params` without its adapter leaves: the base model's tree."""
    return _filter(params, lambda p: not is_adapter(p))


def has_adapters(params: Any) -> bool:
    """Whether the tree holds any adapter leaf."""
    return bool(adapter_params(params))


def frozen_base(*subtrees: str) -> Callable[[str], bool]:
    """A frozen-leaf rule for `train.make_optimizer(freeze=...)`: under each of `subtrees` (""
    for the whole tree, or "policy", "critic"), the backbone and LM head are frozen except their
    adapters; heads a stage adds (reward, value) keep training (Hu et al. 2022, §4.2)."""
    roots = tuple(s.strip("/") for s in subtrees) or ("",)

    def frozen(path: str) -> bool:
        for root in roots:
            rest = path if not root else (path[len(root) + 1:] if path.startswith(root + "/")
                                          else None)
            if rest is not None and rest.split("/", 1)[0] in ("transformer", "lm_head"):
                return not is_adapter(path)
        return False
    return frozen


def add_adapters(params: dict, adapters: dict) -> dict:
    """`params` with the leaves of `adapters` (nested dicts, e.g. `adapter_params(...)` of an
    adapted init) added beside their kernels."""
    out = dict(params)
    for k, v in adapters.items():
        out[k] = add_adapters(out[k], v) if isinstance(v, dict) and isinstance(
            out.get(k), dict) else v
    return out


def count_params(tree: Any) -> int:
    """Number of scalars in a tree (arrays or shape structs)."""
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def merge_adapters(config: TransformerConfig, params: dict) -> tuple[TransformerConfig, dict]:
    """(base config, params with W ← W + s·A·B and no adapter leaves): the adapted model as a
    plain one (Hu et al. 2022, §4.1). The product is formed in float32 and cast to the kernel's
    dtype. Without adapters, returns the inputs unchanged."""
    if not config.lora.enabled and not has_adapters(params):
        return config, params
    scale = config.lora.scale

    def walk(tree):
        if not isinstance(tree, dict):
            return tree
        if "lora_a" in tree and "kernel" in tree:
            a, b, w = tree["lora_a"], tree["lora_b"], tree["kernel"]
            delta = jnp.tensordot(a.astype(jnp.float32), b.astype(jnp.float32), axes=1) * scale
            merged = (w.astype(jnp.float32) + delta).astype(w.dtype)
            return {**{k: v for k, v in tree.items() if k not in ADAPTER_LEAVES},
                    "kernel": merged}
        return {k: walk(v) for k, v in tree.items()}
    return config.without_lora(), walk(params)
