"""Per-token estimates of KL(π ‖ π_ref) from the log-probabilities of sampled tokens (Schulman
2020, "Approximating KL divergence"): one home for PPO's penalty and evaluation's report."""
from __future__ import annotations

import jax.numpy as jnp


ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp_bt, ref_logp_bt, estimator: str = "k1"):
    """Per-token KL estimate from the policy's and the reference's log-probs of the tokens the
    policy sampled, with log r = log π_ref − log π: k1 = −log r, k2 = ½ (log r)², k3 =
    (r − 1) − log r (≥ 0, computed as expm1(log r) − log r)."""
    log_r = ref_logp_bt - logp_bt
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * jnp.square(log_r)
    if estimator == "k3":
        return jnp.expm1(log_r) - log_r
    raise ValueError(f"KL estimator {estimator!r}: expected one of {ESTIMATORS}")
