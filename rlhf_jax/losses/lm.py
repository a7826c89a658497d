"""Language-modelling objective (supervised fine-tuning, PPO-ptx)."""
from __future__ import annotations

import jax.numpy as jnp

from rlhf_jax.models.logprobs import predicted_logprobs, token_logprobs


def next_token_nll_sum(logits_btv, tokens_bt, loss_mask_bt):
    """Σ −log p(x_{t+1} | x_≤t) over target positions whose mask is 1, and their count.

    `loss_mask_bt[:, t]` says whether token t is a target (so position 0 never is). Returns
    (sum, count) so that callers divide once over micro-batches (docs/design.md, masked means).
    """
    nll = -token_logprobs(logits_btv[:, :-1], tokens_bt[:, 1:])
    mask = loss_mask_bt[:, 1:].astype(jnp.float32)
    return jnp.sum(nll * mask), jnp.sum(mask)


def model_nll_sum(out, params, config, tokens_bt, loss_mask_bt):
    """`next_token_nll_sum` from a `DecoderModel` output: over the full logits, or with
    `config.logit_chunk` > 0 from the hidden states in vocabulary chunks (call the model with
    `skip_logits=True` then; see `models.predicted_logprobs`)."""
    logp, _ = predicted_logprobs(out, params, config, tokens_bt[:, 1:], 1)
    mask = loss_mask_bt[:, 1:].astype(jnp.float32)
    return jnp.sum(-logp * mask), jnp.sum(mask)


def next_token_targets(mask_bt):
    """The loss mask of next-token prediction: token t is a target when it and its predecessor
    are real (a left-padded row's first real token has no context to be predicted from)."""
    return mask_bt.at[:, 1:].multiply(mask_bt[:, :-1]).at[:, 0].set(0)
