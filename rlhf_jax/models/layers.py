"""Transformer building blocks: norms, rotary embeddings, attention with an explicit KV cache, MLPs.

Every parameter carries logical axis names (`nn.with_logical_partitioning`) and the main activations
a logical constraint; `rlhf_jax.sharding` maps those names onto a device mesh.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax.models.config import LoraConfig, TransformerConfig, rope_inv_freq

# Logical axis names of activations (parameters use "embed", "vocab", "heads", ...).
BATCH, LENGTH, ACT_EMBED, ACT_HEADS, ACT_KV_HEADS, ACT_MLP, ACT_VOCAB = (
    "batch", "length", "act_embed", "act_heads", "act_kv_heads", "act_mlp", "act_vocab")

_NEG_INF = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully-masked rows give no NaN


def _init(std: float, names: tuple):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), names)


def _zeros(names: tuple):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _ones(names: tuple):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


class LayerNorm(nn.Module):
    """LayerNorm (Ba et al. 2016) computed in float32, as GPT-2 uses it."""

    eps: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", _ones(("norm",)), (d,), self.param_dtype)
        bias = self.param("bias", _zeros(("norm",)), (d,), self.param_dtype)
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x²) + eps) · g, normalised in float32."""

    eps: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", _ones(("norm",)), (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
        # Llama casts back to the input dtype before the gain; keep that order for parity.
        return (scale.astype(self.dtype) * y.astype(self.dtype)).astype(self.dtype)


def apply_rotary(x_bthd, positions_bt, inv_freq):
    """Rotate query/key pairs by position (RoFormer, Su et al. 2021, eq. 34), half-split layout.

    The pair (x_i, x_{i+d/2}) is rotated by angle p·θ_i, the `rotate_half` convention of Llama.
    """
    angles = positions_bt[..., None].astype(jnp.float32) * inv_freq  # [B, T, d/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, d]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x32 = x_bthd.astype(jnp.float32)
    half = x32.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x_bthd.dtype)


class Proj(nn.Module):
    """y = x · W (+ b), contracting the last `in_dims` axes of x with W[in..., out...].

    Unlike `nn.DenseGeneral`, the kernel is created in its final shape, so its logical axis names
    always match its rank. With an enabled `lora`, y += s · (x · A) · B with A [in..., r] and
    B [r, out...] (Hu et al. 2022, eq. 3): A carries the kernel's input axis names and B its
    output names, so adapters shard like their base weight; the rank axis is replicated.
    """

    features: tuple[int, ...]
    kernel_axes: tuple[Optional[str], ...]
    use_bias: bool
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    in_dims: int = 1
    std: float = 0.02
    lora: Optional[LoraConfig] = None  # adapters (and an int8 base) of the model
    adapted: bool = True  # this projection carries an adapter when lora is enabled

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        in_shape = x.shape[x.ndim - self.in_dims:]
        shape = in_shape + tuple(self.features)
        if self.lora is not None and self.lora.quantized:
            # int8 weights with one float32 scale per output channel: W ≈ q · s
            # (`models.quantize_base` fills them from float weights)
            q = self.param("kernel", _zeros(self.kernel_axes), shape, jnp.int8)
            s = self.param("kernel_scale", _ones(self.kernel_axes[self.in_dims:]),
                           tuple(self.features), jnp.float32)
            kernel = (q.astype(jnp.float32) * s).astype(self.dtype)
        else:
            kernel = self.param("kernel", _init(self.std, self.kernel_axes), shape,
                                self.param_dtype)
        y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=self.in_dims)
        if self.use_bias:
            bias = self.param("bias", _zeros(self.kernel_axes[self.in_dims:]),
                              tuple(self.features), self.param_dtype)
            y = y + bias.astype(self.dtype)
        if self.lora is not None and self.lora.enabled and self.adapted:
            y = y + self._adapter(x, in_shape, deterministic)
        return y

    def _adapter(self, x, in_shape, deterministic):
        lora, r = self.lora, self.lora.rank
        # PEFT's init: A ~ U(±1/√fan_in) (kaiming_uniform with a=√5), B = 0
        a_init = nn.initializers.variance_scaling(
            1.0 / 3.0, "fan_in", "uniform", in_axis=tuple(range(self.in_dims)), out_axis=-1)
        a = self.param("lora_a", nn.with_logical_partitioning(
            a_init, self.kernel_axes[:self.in_dims] + ("lora_rank",)), in_shape + (r,),
            jnp.dtype(lora.dtype))
        b = self.param("lora_b", _zeros(("lora_rank",) + self.kernel_axes[self.in_dims:]),
                       (r,) + tuple(self.features), jnp.dtype(lora.dtype))
        if lora.dropout > 0 and not deterministic:
            x = nn.Dropout(lora.dropout)(x, deterministic=False)
        xa = jnp.tensordot(x.astype(self.dtype), a.astype(self.dtype), axes=self.in_dims)
        return jnp.tensordot(xa, b.astype(self.dtype), axes=1) * jnp.asarray(lora.scale,
                                                                            self.dtype)


class Attention(nn.Module):
    """Causal multi-head / grouped-query attention (Vaswani et al. 2017; Ainslie et al. 2023).

    Queries occupy cache slots `cache_index + t`; key slot s is visible to query slot q when
    s <= q and `slot_mask_bs[b, s]` is 1. Without a cache the slots are simply 0..T-1, and
    `segment_ids_bt` (packed rows) restricts attention to keys of the query's own segment.
    """

    config: TransformerConfig

    @nn.compact
    def __call__(self, x_btd, slot_mask_bs, positions_bt, cache: Optional[dict],
                 cache_index, deterministic: bool, segment_ids_bt=None):
        cfg = self.config
        h, kv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dense = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)
        lora = cfg.lora
        if cfg.is_gpt2:
            qkv = Proj((3, h, hd), ("embed", "qkv", "heads", "head_dim"), cfg.qkv_bias,
                       name="qkv", lora=lora, adapted=lora.on("q"), **dense)(
                           x_btd, deterministic)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            def proj(name, n, axis):
                return Proj((n, hd), ("embed", axis, "head_dim"), cfg.qkv_bias, name=name,
                            lora=lora, adapted=lora.on(name), **dense)(x_btd, deterministic)
            q, k, v = proj("q", h, "heads"), proj("k", kv, "kv_heads"), proj("v", kv, "kv_heads")
            inv_freq = jnp.asarray(rope_inv_freq(cfg))
            q = apply_rotary(q, positions_bt, inv_freq)
            k = apply_rotary(k, positions_bt, inv_freq)
        q = nn.with_logical_constraint(q, (BATCH, LENGTH, ACT_HEADS, None))
        b, t = x_btd.shape[:2]
        # The cache keeps keys/values as [B, KV, S, hd]: attention over the cache is then a
        # batched matmul with no per-step transpose of the cache.
        cache_axes = (BATCH, ACT_KV_HEADS, LENGTH, None)
        kc = nn.with_logical_constraint(k.transpose(0, 2, 1, 3), cache_axes)
        vc = nn.with_logical_constraint(v.transpose(0, 2, 1, 3), cache_axes)
        new_cache = None if cache is None else {
            name: jax.lax.dynamic_update_slice_in_dim(cache[name], x.astype(cache[name].dtype),
                                                      cache_index, axis=2)
            for name, x in (("k", kc), ("v", vc))}
        prefill = cache is not None and isinstance(cache_index, int) and cache_index == 0
        if cfg.attention != "xla" and (cache is None or prefill) and not (
                cfg.attn_dropout > 0 and not deterministic):
            # Training, scoring and the prompt's prefill through jax.nn.dot_product_attention:
            # causality is the kernel's own flag and padding a [B, 1, 1, T] key mask, so no
            # [B, H, T, T] mask is built; with attention="cudnn" (GPU, bf16/fp16) cuDNN's flash
            # attention never materialises the scores either (Dao et al. 2022). A prefill fills
            # slots 0..T−1 of an empty cache, so its queries see exactly these keys.
            k = nn.with_logical_constraint(k, (BATCH, LENGTH, ACT_KV_HEADS, None))
            v = nn.with_logical_constraint(v, (BATCH, LENGTH, ACT_KV_HEADS, None))
            key_mask = (slot_mask_bs[:, :t] > 0)[:, None, None]
            if segment_ids_bt is not None:  # packed rows: keys of the query's own segment
                key_mask = key_mask & (segment_ids_bt[:, None, :, None]
                                       == segment_ids_bt[:, None, None, :])
            out = jax.nn.dot_product_attention(
                q, k.astype(q.dtype), v.astype(q.dtype), mask=key_mask, is_causal=True,
                implementation="cudnn" if cfg.attention == "cudnn" else "xla")
            return self._out(out, deterministic), new_cache
        # XLA's own path (attention="xla"; and decode steps, attention dropout): explicit
        # scores, a [B, T, S] visibility mask without a head axis; a decode step's scores are
        # only [B, H, 1, S], and the step is bound by reading the weights and the cache.
        k, v = (kc, vc) if cache is None else (new_cache["k"], new_cache["v"])
        s = k.shape[2]
        q_slots = cache_index + jnp.arange(t)
        visible_bts = (jnp.arange(s)[None, :] <= q_slots[:, None])[None] & (
            slot_mask_bs[:, None, :] > 0)
        if segment_ids_bt is not None:
            visible_bts = visible_bts & (segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :])

        groups = h // kv
        q = q.reshape(b, t, kv, groups, hd).transpose(0, 2, 3, 1, 4)  # [B, KV, G, T, hd]
        scores = jnp.einsum("bkgtd,bksd->bkgts", q, k.astype(q.dtype),
                            preferred_element_type=jnp.float32) * (hd ** -0.5)
        scores = jnp.where(visible_bts[:, None, None], scores, _NEG_INF)
        probs = jax.nn.softmax(scores, axis=-1).astype(cfg.compute_dtype)
        if cfg.attn_dropout > 0 and not deterministic:
            probs = nn.Dropout(cfg.attn_dropout)(probs, deterministic=False)
        out = jnp.einsum("bkgts,bksd->bkgtd", probs, v.astype(probs.dtype))
        out = out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)
        return self._out(out, deterministic), new_cache

    def _out(self, out_bthd, deterministic):
        cfg = self.config
        out = nn.with_logical_constraint(out_bthd, (BATCH, LENGTH, ACT_HEADS, None))
        return Proj((cfg.hidden_size,), ("heads", "head_dim", "embed"), cfg.out_bias,
                    in_dims=2, name="out", dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                    lora=cfg.lora, adapted=cfg.lora.on("o"))(out, deterministic)


class MLP(nn.Module):
    """GPT-2 GELU MLP (Hendrycks & Gimpel 2016, tanh form) or Llama SwiGLU (Shazeer 2020)."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x_btd, deterministic: bool = True):
        cfg = self.config
        f = cfg.intermediate_size

        def proj(name, target, features, axes):
            return Proj((features,), axes, cfg.mlp_bias, name=name, dtype=cfg.compute_dtype,
                        param_dtype=cfg.params_dtype, lora=cfg.lora,
                        adapted=cfg.lora.on(target))

        if cfg.is_gpt2:
            hidden = jax.nn.gelu(proj("fc", "up", f, ("embed", "mlp"))(x_btd, deterministic),
                                 approximate=True)
        else:
            gate = proj("gate", "gate", f, ("embed", "mlp"))(x_btd, deterministic)
            up = proj("up", "up", f, ("embed", "mlp"))(x_btd, deterministic)
            hidden = jax.nn.silu(gate) * up
        hidden = nn.with_logical_constraint(hidden, (BATCH, LENGTH, ACT_MLP))
        return proj("down", "down", cfg.hidden_size, ("mlp", "embed"))(hidden, deterministic)


class Block(nn.Module):
    """Pre-norm residual block: x + Attn(Norm(x)), then x + MLP(Norm(x))."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x_btd, slot_mask_bs, positions_bt, cache, cache_index, deterministic,
                 segment_ids_bt=None):
        cfg = self.config
        norm_cls = LayerNorm if cfg.is_gpt2 else RMSNorm
        norm = dict(eps=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)
        drop = nn.Dropout(cfg.resid_dropout)
        attn_out, new_cache = Attention(cfg, name="attn")(
            norm_cls(name="attn_norm", **norm)(x_btd), slot_mask_bs, positions_bt, cache,
            cache_index, deterministic, segment_ids_bt)
        x_btd = x_btd + drop(attn_out, deterministic=deterministic or cfg.resid_dropout == 0)
        mlp_out = MLP(cfg, name="mlp")(norm_cls(name="mlp_norm", **norm)(x_btd), deterministic)
        x_btd = x_btd + drop(mlp_out, deterministic=deterministic or cfg.resid_dropout == 0)
        return nn.with_logical_constraint(x_btd, (BATCH, LENGTH, ACT_EMBED)), new_cache
