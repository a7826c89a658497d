"""Token log-probabilities: the one place where logits become log π(token).

Every consumer — the sampler's draw, the reference policy's scoring of a rollout, the PPO
update's ratio, evaluation's KL and the language-modelling NLL — goes through `token_logprobs`
(teacher-forced ones through `predicted_logprobs`, which uses it, or its vocabulary-chunked
equivalent `chunked_logprobs`), so the same token gets the same log-probability wherever it is
computed (docs/design.md: at the sampling temperature, over response tokens only).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from rlhf_jax.models.config import TransformerConfig
from rlhf_jax.models.transformer import DecoderModel


def token_logprobs(logits, tokens, temperature: float = 1.0):
    """log softmax(logits / T)[token] = z_token − logsumexp(z), z = logits / T, in float32.

    `logits` [..., V], `tokens` [...] (any leading shape): the full-vocabulary log-probability,
    before any top-k / top-p truncation, which is the quantity PPO's ratio and KL use.
    """
    z = logits.astype(jnp.float32) / temperature
    picked = jnp.take_along_axis(z, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(z, axis=-1)


def token_entropy(logits_btv, temperature: float = 1.0):
    """Entropy −Σ p log p of softmax(logits / T) at every position [B, T]."""
    logp = jax.nn.log_softmax(logits_btv.astype(jnp.float32) / temperature, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def unembedding(params, config: TransformerConfig):
    """The LM head as a [V, D] matrix: the tied input embedding, or the untied head's kernelᵀ."""
    if config.tie_word_embeddings:
        return params["transformer"]["wte"]["embedding"]
    return params["lm_head"]["kernel"].T


def chunked_logprobs(hidden, unembed_vd, tokens, temperature: float = 1.0, chunk: int = 8192,
                     entropy: bool = False):
    """log softmax(h·Wᵀ / T)[token] (and the entropy) with the vocabulary in chunks of `chunk`.

    `hidden` [..., D], `unembed_vd` [V, D], `tokens` [...]. A `lax.scan` over vocabulary chunks
    keeps a running maximum m, Σ e^(z−m) and Σ e^(z−m)·z (the online softmax of Milakov &
    Gimelshein 2018), so logsumexp = m + log Σ and H = logsumexp − Σ e^(z−m)·z / Σ. The chunk
    body is rematerialised: neither pass holds more than one [..., chunk] float32 block, where
    the full path holds [..., V] logits (and keeps them for the backward pass). Logits are
    computed as the model computes them: h and W in the compute dtype, then float32.
    Returns (log-probs, entropy or None), float32.
    """
    v, d = unembed_vd.shape
    n = -(-v // chunk)
    w = jnp.pad(unembed_vd, ((0, n * chunk - v), (0, 0))).reshape(n, chunk, d)
    tokens = tokens.astype(jnp.int32)
    lead = tokens.shape

    @jax.checkpoint
    def body(carry, xs):
        m, total, weighted, picked = carry
        w_c, start = xs
        z = jnp.einsum("...d,cd->...c", hidden, w_c.astype(hidden.dtype)).astype(jnp.float32)
        z = z / temperature
        valid = start + jnp.arange(chunk) < v
        z = jnp.where(valid, z, -jnp.inf)
        m_new = jax.lax.stop_gradient(jnp.maximum(m, z.max(axis=-1)))
        scale = jnp.exp(m - m_new)
        e = jnp.exp(z - m_new[..., None])
        total = total * scale + e.sum(axis=-1)
        weighted = weighted * scale + jnp.where(valid, e * z, 0.0).sum(axis=-1)
        idx = tokens - start
        inside = (idx >= 0) & (idx < chunk)
        got = jnp.take_along_axis(z, jnp.clip(idx, 0, chunk - 1)[..., None], axis=-1)[..., 0]
        return (m_new, total, weighted, picked + jnp.where(inside, got, 0.0)), None

    zeros = jnp.zeros(lead, jnp.float32)
    init = (jnp.full(lead, -jnp.inf, jnp.float32), zeros, zeros, zeros)
    (m, total, weighted, picked), _ = jax.lax.scan(
        body, init, (w, jnp.arange(n, dtype=jnp.int32) * chunk))
    lse = m + jnp.log(total)
    return picked - lse, (lse - weighted / total if entropy else None)


def predicted_logprobs(out, params, config: TransformerConfig, next_tokens, start: int,
                       temperature: float = 1.0, entropy: bool = False):
    """log π(next_tokens[:, j]) predicted at positions start−1+j of a `DecoderModel` output, and
    optionally the entropy there: from `out.logits`, or with `config.logit_chunk` > 0 from
    `out.hidden` and the LM head in vocabulary chunks (`chunked_logprobs`), so that [B, T, V]
    logits never exist (call the model with `skip_logits=True` then). Returns (logp, entropy)."""
    n = next_tokens.shape[1]
    if config.logit_chunk:
        h = out.hidden[:, start - 1:start - 1 + n]
        return chunked_logprobs(h, unembedding(params, config), next_tokens, temperature,
                                config.logit_chunk, entropy)
    logits = out.logits[:, start - 1:start - 1 + n]
    return (token_logprobs(logits, next_tokens, temperature),
            token_entropy(logits, temperature) if entropy else None)


@partial(jax.jit, static_argnames=("config", "temperature"))
def response_logprobs(params, prompt_tokens, prompt_mask, response_tokens, response_mask, *,
                      config: TransformerConfig, temperature: float = 1.0):
    """Teacher-forced log softmax(logits / T) of each response token given its prefix [B, N].

    Masked response positions get 0. This is how the reference policy scores a rollout and how
    evaluation measures KL.
    """
    tokens = jnp.concatenate([prompt_tokens, response_tokens], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1).astype(jnp.int32)
    out = DecoderModel(config).apply({"params": params}, tokens, mask,
                                     skip_logits=config.logit_chunk > 0)
    logp, _ = predicted_logprobs(out, params, config, response_tokens, prompt_tokens.shape[1],
                                 temperature)
    return jnp.where(response_mask > 0, logp, 0.0)
