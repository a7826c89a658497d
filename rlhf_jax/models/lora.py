"""Low-rank adapters on a parameter tree: which leaves train, and merging.

The adapters themselves live in `layers.Proj` (leaves "lora_a" [in..., r] and "lora_b"
[r, out...] beside each adapted "kernel"). This module works on the parameter tree: it picks
the adapter leaves, freezes the base, and merges W + s·A·B into plain kernels (Hu et al. 2022,
§4.1: no inference latency). `models.peft_io` reads and writes the adapter alone in PEFT's
format.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models.config import LoraConfig, TransformerConfig

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


def frozen_base(*subtrees: str, train: tuple[str, ...] = ()) -> Callable[[str], bool]:
    """A frozen-leaf rule for `train.make_optimizer(freeze=...)`: under each of `subtrees` (""
    for the whole tree, or "policy", "critic"), the backbone and LM head are frozen except their
    adapters and the modules named in `train` ("lm_head": `LoraConfig.modules_to_save`); heads
    a stage adds (reward, value) keep training (Hu et al. 2022, §4.2)."""
    roots = tuple(s.strip("/") for s in subtrees) or ("",)

    def frozen(path: str) -> bool:
        for root in roots:
            rest = path if not root else (path[len(root) + 1:] if path.startswith(root + "/")
                                          else None)
            top = None if rest is None else rest.split("/", 1)[0]
            if top in ("transformer", "lm_head"):
                return not (is_adapter(path) or top in train)
        return False
    return frozen


def reference_overlay(config: TransformerConfig, params: dict) -> dict | None:
    """What the reference of an adapted policy needs beside the policy's own (frozen) weights:
    copies of the modules that train in full (`lora.modules_to_save`), or None. The reference's
    parameters are then `{**policy_params, **overlay}`, read with adapters off."""
    saved = config.lora.modules_to_save if config.lora.enabled else ()
    if not saved:
        return None
    return {name: jax.tree.map(lambda x: x.copy(), params[name]) for name in saved}


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
    """(plain config, params with W ← W + s·A·B and no adapter leaves): the adapted model as a
    plain one (Hu et al. 2022, §4.1). The product is formed in float32 and cast to the
    parameter dtype; an int8 base is dequantized first (W = q·s). Without adapters or an int8
    base, returns the inputs unchanged."""
    lora = config.lora
    if not lora.enabled and not lora.quantized and not has_adapters(params):
        return config, params
    scale = lora.scale if lora.enabled else 0.0
    dtype = config.params_dtype

    def walk(tree):
        if not isinstance(tree, dict):
            return tree
        if "kernel" in tree and ("lora_a" in tree or "kernel_scale" in tree):
            w = tree["kernel"]
            if "kernel_scale" in tree:
                w = (w.astype(jnp.float32) * tree["kernel_scale"]).astype(dtype)
            if "lora_a" in tree:
                a, b = tree["lora_a"].astype(jnp.float32), tree["lora_b"].astype(jnp.float32)
                w = (w.astype(jnp.float32) + jnp.tensordot(a, b, axes=1) * scale).astype(w.dtype)
            drop = ADAPTER_LEAVES + ("kernel_scale",)
            return {**{k: v for k, v in tree.items() if k not in drop}, "kernel": w}
        return {k: walk(v) for k, v in tree.items()}
    return config.replace(lora=LoraConfig()), walk(params)


def quantize_base(params: dict) -> dict:
    """Every projection kernel of the backbone (attention and MLP) as int8 with one float32
    scale per output channel: s = max|W| / 127 over the input axes, q = round(W / s)
    (symmetric absmax quantization; each weight's error is at most s/2). Embeddings, the LM
    head, norms, biases, heads and adapters keep their dtype. Use with
    `LoraConfig(quantize_base="int8")`."""
    def walk(tree, path):
        if not isinstance(tree, dict):
            return tree
        if "kernel" in tree and ("attn" in path or "mlp" in path) and \
                "kernel_scale" not in tree and tree["kernel"].dtype != jnp.int8:
            w = tree["kernel"].astype(jnp.float32)
            in_dims = 2 if path[-1] == "out" else 1
            s = jnp.max(jnp.abs(w), axis=tuple(range(in_dims))) / 127.0
            s = jnp.where(s > 0, s, 1.0)
            q = jnp.clip(jnp.round(w / s), -127, 127).astype(jnp.int8)
            return {**tree, "kernel": q, "kernel_scale": s}
        return {k: walk(v, path + (k,)) for k, v in tree.items()}
    return walk(params, ())


def soup_weights(preferences) -> np.ndarray:
    """Interpolation weights λ on the simplex from a user's preference weights over the
    rewards the ingredients were trained on: negative weights (a reward the user dislikes)
    get no share, the rest are normalised to sum 1; all ≤ 0 gives equal shares (a rewarded soup
    interpolates, it does not extrapolate: Ramé et al. 2023, §3)."""
    w = np.maximum(np.asarray(preferences, np.float64), 0.0)
    return (w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))).astype(np.float32)


def rewarded_soup(config: TransformerConfig, ingredients: Sequence[dict],
                  weights) -> tuple[TransformerConfig, dict]:
    """(plain config, θ = Σ_i λ_i θ_i): policies fine-tuned from one base on different rewards,
    each with its LoRA adapters merged (`merge_adapters`), interpolated with weights λ on the
    simplex (Ramé et al. 2023, "Rewarded soups", eq. 1). With shared base weights W this is
    W + Σ_i λ_i ΔW_i: the adapters' updates mixed by the user's weights, without training
    per user. Weighs in float32 and casts back to the parameter dtype."""
    lam = np.asarray(weights, np.float64)
    if len(lam) != len(ingredients) or lam.min() < 0 or not np.isclose(lam.sum(), 1.0,
                                                                         atol=1e-5):
        raise ValueError(f"rewarded_soup: weights {lam.tolist()} must be one per ingredient "
                         f"({len(ingredients)}), >= 0 and sum to 1 (see soup_weights)")
    merged = [merge_adapters(config, p) for p in ingredients]
    plain = merged[0][0]
    trees = [t for _, t in merged]
    shapes = [jax.tree.structure(t) for t in trees]
    if any(s != shapes[0] for s in shapes):
        raise ValueError("rewarded_soup: the ingredients' parameters differ in structure (not "
                         "fine-tuned from one base with the same adapters)")


    def mix(first, *xs):  # θ_0 + Σ λ_i (θ_i − θ_0) = Σ λ_i θ_i: a shared leaf stays exact
        f = first.astype(jnp.float32)
        return (f + sum(float(l) * (x.astype(jnp.float32) - f)
                        for l, x in zip(lam, (first,) + xs))).astype(first.dtype)
    return plain, jax.tree.map(mix, *trees)
