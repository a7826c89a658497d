"""Per-token KL penalties toward the reference policy, and the β controllers.

With samples from the policy π and log r = log π_ref(y_t) − log π(y_t), the estimators of
KL(π ‖ π_ref) are (Schulman 2020, "Approximating KL divergence"):
k1 = −log r (unbiased, can be negative), k2 = ½ (log r)² (biased, low variance),
k3 = (r − 1) − log r (unbiased, always ≥ 0).
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from rlhf_jax.losses.kl import ESTIMATORS, kl_estimate  # noqa: F401 (re-exported)
from rlhf_jax.models import last_token_index


def token_rewards(score_b, kl_bt, mask_bt, beta):
    """r_t = −β·kl_t on every response token, plus the sequence score on the last real token
    (Ziegler et al. 2019, eq. 2; docs/design.md numerics)."""
    mask = mask_bt.astype(jnp.float32)
    t = mask.shape[1]
    has_tokens = mask.sum(1) > 0
    at_last = (jnp.arange(t)[None, :] == last_token_index(mask)[:, None]) & has_tokens[:, None]
    return (-beta * kl_bt * mask) + jnp.where(at_last, score_b[:, None], 0.0)


class KLControllerState(NamedTuple):
    """β and its controller's settings (a pytree the checkpoint saves)."""

    beta: jnp.ndarray


def fixed_kl_init(beta: float) -> KLControllerState:
    """A constant β."""
    return KLControllerState(beta=jnp.asarray(beta, jnp.float32))


def fixed_kl_update(state: KLControllerState, kl, n_steps) -> KLControllerState:
    """No change."""
    return state


def adaptive_kl_init(beta: float) -> KLControllerState:
    """Initial β of the adaptive controller."""
    return KLControllerState(beta=jnp.asarray(beta, jnp.float32))


def adaptive_kl_update(state: KLControllerState, kl, n_steps, *, target: float,
                       horizon: float) -> KLControllerState:
    """Ziegler et al. (2019, §2.2): e = clip(KL/target − 1, ±0.2); β ← β·(1 + e·n_steps/horizon)."""
    error = jnp.clip(kl / target - 1.0, -0.2, 0.2)
    return KLControllerState(beta=state.beta * (1.0 + error * n_steps / horizon))
