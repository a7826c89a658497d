"""Language-modelling objective (supervised fine-tuning, PPO-ptx)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def next_token_nll_sum(logits_btv, tokens_bt, loss_mask_bt):
    """Σ −log p(x_{t+1} | x_≤t) over target positions whose mask is 1, and their count.

    `loss_mask_bt[:, t]` says whether token t is a target (so position 0 never is). Returns
    (sum, count) so that callers divide once over micro-batches (DESIGN.md, masked means).
    """
    logp = jax.nn.log_softmax(logits_btv[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, tokens_bt[:, 1:, None], axis=-1)[..., 0]
    mask = loss_mask_bt[:, 1:].astype(jnp.float32)
    return jnp.sum(nll * mask), jnp.sum(mask)
