"""Token log-probabilities: the one place where logits become log π(token).

Every consumer — the sampler's draw, the reference policy's scoring of a rollout, the PPO
update's ratio, evaluation's KL and the language-modelling NLL — goes through `token_logprobs`,
so the same token gets the same log-probability wherever it is computed (DESIGN.md: at the
sampling temperature, over response tokens only).
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


def response_logits(logits_btv, prompt_len: int):
    """The logits that predict the response tokens: positions P−1 .. T−2 of prompt + response."""
    return logits_btv[:, prompt_len - 1:-1]


def response_token_logprobs(logits_btv, prompt_len: int, response_tokens, response_mask,
                            temperature: float = 1.0):
    """log π(y_t | x, y_<t) [B, N] from the logits of the whole prompt + response; 0 where masked."""
    logp = token_logprobs(response_logits(logits_btv, prompt_len), response_tokens, temperature)
    return jnp.where(response_mask > 0, logp, 0.0)


@partial(jax.jit, static_argnames=("config", "temperature"))
def response_logprobs(params, prompt_tokens, prompt_mask, response_tokens, response_mask, *,
                      config: TransformerConfig, temperature: float = 1.0):
    """Teacher-forced log softmax(logits / T) of each response token given its prefix [B, N].

    Masked response positions get 0. This is how the reference policy scores a rollout and how
    evaluation measures KL.
    """
    tokens = jnp.concatenate([prompt_tokens, response_tokens], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1).astype(jnp.int32)
    logits = DecoderModel(config).apply({"params": params}, tokens, mask).logits
    return response_token_logprobs(logits, prompt_tokens.shape[1], response_tokens,
                                   response_mask, temperature)
