"""The decoder-only transformer backbone and the heads it feeds (LM, value, reward)."""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from rlhf_jax.models.config import REMAT_POLICIES, TransformerConfig
from rlhf_jax.models.layers import (ACT_EMBED, ACT_VOCAB, BATCH, LENGTH, Block, LayerNorm,
                                    RMSNorm, _init, _ones, _zeros)

HEADS = ("lm", "value", "reward")


def positions_from_mask(mask_bs):
    """Position ids from the attention mask: p = cumsum(mask) − 1 (0 on pads).

    With left padding this makes the first real token position 0, so padding never shifts
    positions.
    """
    mask_bs = mask_bs.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask_bs, axis=-1) - 1, 0) * mask_bs


def last_token_index(mask_bt):
    """Index of the last non-pad token of each row (T − 1 for a row without any)."""
    t = mask_bt.shape[-1]
    return t - 1 - jnp.argmax(jnp.flip(mask_bt.astype(jnp.int32), axis=-1) > 0, axis=-1)


def init_cache(config: TransformerConfig, batch: int, max_length: int):
    """A zeroed KV cache: per layer k and v of shape [batch, kv_heads, max_length, head_dim].

    Memory: 2 · num_layers · batch · max_length · num_kv_heads · head_dim · itemsize(dtype) bytes,
    allocated once in the compute dtype.
    """
    config.check_length(max_length)
    shape = (batch, config.num_kv_heads, max_length, config.head_dim)
    return [{"k": jnp.zeros(shape, config.compute_dtype), "v": jnp.zeros(shape, config.compute_dtype)}
            for _ in range(config.num_layers)]


class Transformer(nn.Module):
    """Token (+ learned position) embeddings, `num_layers` pre-norm blocks and a final norm.

    `__call__` returns the final hidden states [B, T, D] and, when a cache is passed, the updated
    cache. `attention_mask` covers all key slots: [B, T] without a cache, [B, S] with one.
    `segment_ids` [B, T] (packed rows: 1, 2, … per example, 0 on padding) lets each token attend
    only within its own segment; pass the per-segment `position_ids` with them.
    `inputs_embeds` [B, T, D] replaces the token-embedding lookup (position embeddings are still
    added), as Hugging Face's `inputs_embeds` does: what gradient-based attributions
    differentiate through. Hidden state l (0: the embeddings, l: after block l, the last one
    after the final norm, as transformers' `output_hidden_states`) is sown into the
    "intermediates" collection as `hidden_l` and passes a `perturb` point of the same name:
    both are no-ops unless the caller asks for those collections.
    """

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        emb = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)
        self.wte = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="wte",
                            embedding_init=_init(0.02, ("vocab", "embed")), **emb)
        if cfg.is_gpt2:
            self.wpe = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, name="wpe",
                                embedding_init=_init(0.01, ("position", "embed")), **emb)
        policy = REMAT_POLICIES[cfg.remat]
        block = Block if policy is None else nn.remat(
            Block, static_argnums=(5, 6), policy=getattr(jax.checkpoint_policies, policy))
        self.blocks = [block(cfg, name=f"block_{i}") for i in range(cfg.num_layers)]
        norm_cls = LayerNorm if cfg.is_gpt2 else RMSNorm
        self.final_norm = norm_cls(eps=cfg.norm_eps, name="final_norm", **{
            "dtype": cfg.compute_dtype, "param_dtype": cfg.params_dtype})
        self.embed_dropout = nn.Dropout(cfg.embd_dropout)

    def __call__(self, tokens_bt, attention_mask=None, position_ids=None, *, cache=None,
                 cache_index=0, deterministic: bool = True, inputs_embeds=None,
                 segment_ids=None):
        cfg = self.config
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids (packed rows) are for training and scoring, not "
                             "with a KV cache")
        b, t = (tokens_bt if inputs_embeds is None else inputs_embeds).shape[:2]
        slots = t if cache is None else cache[0]["k"].shape[2]
        cfg.check_length(slots)
        if attention_mask is None:
            attention_mask = jnp.ones((b, slots), jnp.int32)
        if attention_mask.shape != (b, slots):
            raise ValueError(f"attention_mask has shape {attention_mask.shape}; expected "
                             f"{(b, slots)} (batch, {'tokens' if cache is None else 'cache slots'})")
        if position_ids is None:
            position_ids = jax.lax.dynamic_slice_in_dim(
                positions_from_mask(attention_mask), cache_index, t, axis=1)
        x = self.wte(tokens_bt) if inputs_embeds is None else inputs_embeds.astype(
            cfg.compute_dtype)
        if cfg.is_gpt2:
            x = x + self.wpe(position_ids)
        x = self.embed_dropout(x, deterministic=deterministic or cfg.embd_dropout == 0)
        x = nn.with_logical_constraint(x, (BATCH, LENGTH, ACT_EMBED))
        new_cache = []
        for i, block in enumerate(self.blocks):
            x = self._tap(i, x)
            x, layer_cache = block(x, attention_mask, position_ids,
                                   None if cache is None else cache[i], cache_index,
                                   deterministic, segment_ids)
            new_cache.append(layer_cache)
        return self._tap(cfg.num_layers, self.final_norm(x)), (None if cache is None
                                                               else new_cache)

    def _tap(self, layer: int, x):
        """Hidden state `layer`: a perturbation point, then sown (both no-ops by default)."""
        x = self.perturb(f"hidden_{layer}", x)
        self.sow("intermediates", f"hidden_{layer}", x)
        return x

    def embed(self, tokens_bt):
        """The token embeddings [B, T, D] that `inputs_embeds` replaces."""
        return self.wte(tokens_bt)

    def attend(self, hidden_btd):
        """Logits from the tied input embedding: h · Eᵀ."""
        return self.wte.attend(hidden_btd)


class RewardHead(nn.Module):
    """Sequence reward read at the last non-pad token: r = gain ⊙ (w·h + b₀) + bias.

    `gain` and `bias` (one per output) are what reward normalisation sets so that rewards on a
    reference set have mean 0 and std 1 (Ziegler et al. 2019, §2.2). With `num_outputs > 1` it is an
    ensemble of heads on one backbone and returns [B, M]; otherwise [B].
    """

    config: TransformerConfig
    num_outputs: int = 1

    @nn.compact
    def __call__(self, hidden_btd, mask_bt):
        cfg = self.config
        idx_b = last_token_index(mask_bt)
        last_bd = jnp.take_along_axis(hidden_btd, idx_b[:, None, None], axis=1)[:, 0]
        raw_bm = nn.Dense(self.num_outputs, name="proj", dtype=jnp.float32,
                          param_dtype=cfg.params_dtype,
                          kernel_init=_init(1.0 / (cfg.hidden_size + 1) ** 0.5,
                                            ("embed", "head_out")),
                          bias_init=_zeros(("head_out",)))(last_bd)
        gain = self.param("gain", _ones(("head_out",)), (self.num_outputs,), cfg.params_dtype)
        bias = self.param("bias", _zeros(("head_out",)), (self.num_outputs,), cfg.params_dtype)
        reward_bm = raw_bm * gain.astype(jnp.float32) + bias.astype(jnp.float32)
        return reward_bm[:, 0] if self.num_outputs == 1 else reward_bm


@struct.dataclass
class ModelOutput:
    """What `DecoderModel` returns; heads that were not requested are None."""

    logits: Optional[jax.Array] = None  # [B, T, V] float32
    values: Optional[jax.Array] = None  # [B, T] float32
    reward: Optional[jax.Array] = None  # [B] (or [B, M] for an ensemble) float32
    hidden: Optional[jax.Array] = None  # [B, T, D] final hidden states
    cache: Optional[list] = None  # updated KV cache when one was passed


class DecoderModel(nn.Module):
    """A backbone feeding any of the heads "lm", "value" and "reward".

    Parameters: {"transformer": ..., "lm_head": ... (untied only), "value_head": ...,
    "reward_head": ...}. `model.apply({"params": params}, tokens, mask)` is pure; pass
    `deterministic=False` and a "dropout" rng to switch dropout on; `last_logits_only=True`
    computes logits for the final position only ([B, 1, V]); `skip_logits=True` none at all (for
    `models.predicted_logprobs` with `config.logit_chunk`). `inputs_embeds` [B, T, D] (from
    `model.apply(..., method="embed")`) stands in for the tokens' embeddings; pass
    `tokens_bt=None` with it. `segment_ids` [B, T] keep packed examples apart (see
    `Transformer`).
    """

    config: TransformerConfig
    heads: Sequence[str] = ("lm",)
    num_reward_outputs: int = 1

    def setup(self):
        unknown = set(self.heads) - set(HEADS)
        if unknown:
            raise ValueError(f"DecoderModel.heads has unknown heads {sorted(unknown)}; "
                             f"expected a subset of {HEADS}")
        cfg = self.config
        self.transformer = Transformer(cfg)
        if "lm" in self.heads and not cfg.tie_word_embeddings:
            self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, name="lm_head",
                                    dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                                    kernel_init=_init(0.02, ("embed", "vocab")))
        if "value" in self.heads:
            self.value_head = nn.Dense(1, name="value_head", dtype=jnp.float32,
                                       param_dtype=cfg.params_dtype,
                                       kernel_init=_init(1.0 / (cfg.hidden_size + 1) ** 0.5,
                                                         ("embed", "head_out")),
                                       bias_init=_zeros(("head_out",)))
        if "reward" in self.heads:
            self.reward_head = RewardHead(cfg, self.num_reward_outputs, name="reward_head")

    def __call__(self, tokens_bt, attention_mask=None, position_ids=None, *, cache=None,
                 cache_index=0, deterministic: bool = True,
                 last_logits_only: bool = False, skip_logits: bool = False,
                 inputs_embeds=None, segment_ids=None) -> ModelOutput:
        hidden, new_cache = self.transformer(tokens_bt, attention_mask, position_ids,
                                             cache=cache, cache_index=cache_index,
                                             deterministic=deterministic,
                                             inputs_embeds=inputs_embeds,
                                             segment_ids=segment_ids)
        out = {"hidden": hidden, "cache": new_cache}
        if "lm" in self.heads and not skip_logits:
            h = hidden[:, -1:] if last_logits_only else hidden  # prefill needs the last only
            logits = (self.transformer.attend(h) if self.config.tie_word_embeddings
                      else self.lm_head(h))
            out["logits"] = nn.with_logical_constraint(logits.astype(jnp.float32),
                                                       (BATCH, LENGTH, ACT_VOCAB))
        if "value" in self.heads:
            out["values"] = self.value_head(hidden.astype(jnp.float32))[..., 0]
        if "reward" in self.heads:
            t = hidden.shape[1]
            mask = (jnp.ones(hidden.shape[:2], jnp.int32) if attention_mask is None
                    else attention_mask[:, -t:] if cache is None
                    else jax.lax.dynamic_slice_in_dim(attention_mask, cache_index, t, axis=1))
            out["reward"] = self.reward_head(hidden, mask)
        return ModelOutput(**out)

    def embed(self, tokens_bt):
        """The token embeddings [B, T, D] that `__call__`'s `inputs_embeds` replaces."""
        return self.transformer.embed(tokens_bt)


def init_params(model: nn.Module, rng, length: int = 8):
    """Randomly initialised parameters (plain arrays, logical-axis boxes removed)."""
    tokens = jnp.zeros((1, length), jnp.int32)
    return nn.unbox(jax.jit(model.init)(rng, tokens)["params"])


def logical_axes(model: nn.Module, length: int = 8):
    """The logical axis names of every parameter (flax logical specs; no device layout)."""
    tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), tokens)
    return nn.get_partition_spec(abstract)["params"]
