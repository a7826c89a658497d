"""Jitted autoregressive sampling with a KV cache: one compiled program per set of shapes.

Layout (docs/design.md): prompts are left-padded to a fixed length P; the response occupies cache
slots P .. P+N−1. Position ids come from the slot mask, so padding never shifts positions.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import struct

from rlhf_jax.models import DecoderModel, TransformerConfig, init_cache
from rlhf_jax.sampling.processors import sample_token
from rlhf_jax.sampling.config import SamplingConfig


@struct.dataclass
class SampleOutput:
    """Sampled responses. Tokens after EOS (or never reached) are pad with mask 0."""

    tokens: jax.Array  # [B, N] int32
    logprobs: jax.Array  # [B, N] float32, log softmax(logits / T) of each token; 0 where masked
    mask: jax.Array  # [B, N] int32, 1 for generated tokens up to and including EOS
    lengths: jax.Array  # [B] int32, number of generated tokens (EOS included)
    ended_with_eos: jax.Array  # [B] bool
    num_steps: jax.Array  # [] int32, decode steps run (< N when every row finished early)


def kv_cache_bytes(config: TransformerConfig, batch: int, prompt_len: int,
                   max_new_tokens: int) -> int:
    """Bytes of the KV cache `generate` allocates:
    2 · num_layers · batch · (prompt_len + max_new_tokens) · num_kv_heads · head_dim · itemsize."""
    return (2 * config.num_layers * batch * (prompt_len + max_new_tokens) * config.num_kv_heads
            * config.head_dim * config.compute_dtype.itemsize)


@partial(jax.jit, static_argnames=("config", "sampling"))
def generate(params, prompt_tokens, prompt_mask, key, *, config: TransformerConfig,
             sampling: SamplingConfig) -> SampleOutput:
    """Sample `sampling.max_new_tokens` tokens after left-padded prompts [B, P].

    Prefill writes the prompt into a KV cache of P + N slots (allocated once, compute dtype), then
    a `lax.while_loop` decodes one token per step with key `fold_in(key, step)` and stops as soon
    as every row has emitted an EOS id; shapes stay static throughout. Calls with the same shapes
    and configs reuse one compiled program. Extra parameter subtrees (value or reward heads) are
    ignored.
    """
    b, p = prompt_tokens.shape
    n = sampling.max_new_tokens
    model = DecoderModel(config)
    variables = {"params": params}
    cache = init_cache(config, b, p + n)
    slot_mask = jnp.concatenate([prompt_mask.astype(jnp.int32), jnp.ones((b, n), jnp.int32)], 1)
    prefill = model.apply(variables, prompt_tokens, slot_mask, cache=cache, cache_index=0,
                          last_logits_only=True)
    eos = jnp.asarray(sampling.eos_token_ids or (-1,), jnp.int32)
    pad = sampling.pad_token_id
    draw = partial(sample_token, temperature=sampling.temperature, top_k=sampling.top_k,
                   top_p=sampling.top_p, greedy=sampling.greedy)

    def cond(state):
        step, _, _, _, _, _, done = state
        return (step < n) & ~jnp.all(done)

    def body(state):
        step, logits, cache, tokens, logprobs, mask, done = state
        token, logprob = draw(jax.random.fold_in(key, step), logits)
        live = ~done
        token = jnp.where(live, token, pad)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], step, axis=1)
        logprobs = jax.lax.dynamic_update_slice_in_dim(
            logprobs, jnp.where(live, logprob, 0.0)[:, None], step, axis=1)
        mask = jax.lax.dynamic_update_slice_in_dim(mask, live.astype(jnp.int32)[:, None], step,
                                                   axis=1)
        done = done | (live & jnp.isin(token, eos))
        out = model.apply(variables, token[:, None], slot_mask, cache=cache, cache_index=p + step)
        return step + 1, out.logits[:, -1], out.cache, tokens, logprobs, mask, done

    state = (jnp.int32(0), prefill.logits[:, -1], prefill.cache,
             jnp.full((b, n), pad, jnp.int32), jnp.zeros((b, n), jnp.float32),
             jnp.zeros((b, n), jnp.int32), jnp.zeros((b,), bool))
    steps, _, _, tokens, logprobs, mask, done = jax.lax.while_loop(cond, body, state)
    return SampleOutput(tokens=tokens, logprobs=logprobs, mask=mask, lengths=mask.sum(-1),
                        ended_with_eos=done, num_steps=steps)
