"""Offline preference optimisation and offline RL from logged feedback.

Every function takes per-sequence log-probabilities (sums over response tokens, float32) of the
policy and, where the method uses one, the frozen reference, and returns per-example losses and
a dict of per-example metrics, so that callers mask, weight and reduce exactly (sums and counts)
across micro-batches. Implicit rewards are β·(log π − log π_ref) (Rafailov et al. 2023, eq. 5).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _f32(*xs):
    return tuple(jnp.asarray(x, jnp.float32) for x in xs)


def _pair_metrics(reward_chosen, reward_rejected) -> dict:
    return {"rewards/chosen": reward_chosen, "rewards/rejected": reward_rejected,
            "rewards/margin": reward_chosen - reward_rejected,
            "rewards/accuracy": (reward_chosen > reward_rejected).astype(jnp.float32)}


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float = 0.1,
             label_smoothing: float = 0.0, robust: bool = False):
    """Direct Preference Optimization (Rafailov et al. 2023, eq. 7):
    −log σ(β·h), h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)).

    `label_smoothing` ε > 0 is conservative DPO (Mitchell 2023): the expected loss when a label
    is flipped with probability ε, −(1−ε) log σ(βh) − ε log σ(−βh). With `robust=True` it is
    the unbiased estimator of robust DPO (Chowdhury et al. 2024, eq. 9):
    [−(1−ε) log σ(βh) + ε log σ(−βh)] / (1 − 2ε).
    Returns (loss [B], metrics with the implicit rewards β·(log π − log π_ref)).
    """
    pc, pr, rc, rr = _f32(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    logits = beta * ((pc - rc) - (pr - rr))
    eps = label_smoothing
    if robust:
        if not 0.0 <= eps < 0.5:
            raise ValueError(f"label_smoothing={eps}: robust DPO needs 0 <= ε < 0.5")
        loss = (-(1 - eps) * jax.nn.log_sigmoid(logits)
                + eps * jax.nn.log_sigmoid(-logits)) / (1 - 2 * eps)
    else:
        loss = -(1 - eps) * jax.nn.log_sigmoid(logits) - eps * jax.nn.log_sigmoid(-logits)
    return loss, _pair_metrics(beta * (pc - rc), beta * (pr - rr))


def ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float = 0.1):
    """Identity Preference Optimisation (Azar et al. 2023, eq. 17): (h − 1/(2β))², h the DPO
    log-ratio difference. The regression target keeps the log-ratio gap finite where DPO's
    sigmoid keeps pushing it. Returns (loss [B], metrics)."""
    pc, pr, rc, rr = _f32(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    h = (pc - rc) - (pr - rr)
    return jnp.square(h - 1.0 / (2.0 * beta)), _pair_metrics(beta * (pc - rc), beta * (pr - rr))


def simpo_loss(policy_chosen, policy_rejected, len_chosen, len_rejected, *, beta: float = 2.0,
               gamma: float = 0.5):
    """SimPO (Meng et al. 2024, eq. 6): −log σ(β/|y_w|·log π(y_w) − β/|y_l|·log π(y_l) − γ).

    Reference-free: the implicit reward is the length-normalised log-probability times β, and γ
    is the target margin. `len_*` are response lengths in tokens. Returns (loss [B], metrics).
    """
    pc, pr, lc, lr = _f32(policy_chosen, policy_rejected, len_chosen, len_rejected)
    reward_c, reward_r = beta * pc / jnp.maximum(lc, 1.0), beta * pr / jnp.maximum(lr, 1.0)
    return -jax.nn.log_sigmoid(reward_c - reward_r - gamma), _pair_metrics(reward_c, reward_r)


def kto_reference_point(policy_mismatched, ref_mismatched, weight=None):
    """KTO's reference point z₀ (Ethayarajh et al. 2024, §4.1): the batch estimate of
    KL(π ‖ π_ref) from completions paired with unrelated prompts, max(0, mean(log π − log π_ref)),
    with no gradient; `weight` (0 for padding rows) makes the mean a weighted one."""
    pm, rm = _f32(policy_mismatched, ref_mismatched)
    w = jnp.ones_like(pm) if weight is None else jnp.asarray(weight, jnp.float32)
    mean = jnp.sum(w * (pm - rm)) / jnp.maximum(jnp.sum(w), 1.0)
    return jax.lax.stop_gradient(jnp.maximum(mean, 0.0))


def kto_loss(policy_logp, ref_logp, desirable, reference_point, *, beta: float = 0.1,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    """Kahneman–Tversky Optimisation (Ethayarajh et al. 2024, eq. 8) for unpaired feedback:
    with r = log π(y|x) − log π_ref(y|x) and z₀ the reference point,
    v = λ_D·σ(β(r − z₀)) for desirable y and λ_U·σ(β(z₀ − r)) for undesirable y,
    and the loss is λ_y − v. Returns (loss [B], metrics: the implicit reward β·r, the value v
    and the class weight λ_y of each example)."""
    lp, rp = _f32(policy_logp, ref_logp)
    good = jnp.asarray(desirable, bool)
    r = lp - rp
    weight = jnp.where(good, desirable_weight, undesirable_weight).astype(jnp.float32)
    value = weight * jax.nn.sigmoid(beta * jnp.where(good, r - reference_point,
                                                     reference_point - r))
    return weight - value, {"rewards/implicit": beta * r, "kto/value": value,
                            "kto/weight": weight}


def orpo_loss(nll_chosen, policy_chosen, policy_rejected, len_chosen, len_rejected, *,
              lam: float = 0.1):
    """ORPO (Hong et al. 2024, eqs. 6–7): L_SFT − λ·log σ(log odds(y_w) − log odds(y_l)), where
    odds(y) = P(y)/(1 − P(y)) with P(y) the length-normalised likelihood exp(log π(y)/|y|), and
    L_SFT the chosen response's NLL per token (`nll_chosen`). Reference-free. Returns (loss [B],
    metrics: the log odds ratio and the odds-ratio term)."""
    nll, pc, pr, lc, lr = _f32(nll_chosen, policy_chosen, policy_rejected, len_chosen,
                               len_rejected)
    avg_c, avg_r = pc / jnp.maximum(lc, 1.0), pr / jnp.maximum(lr, 1.0)

    def log_odds(avg):  # log P − log(1 − P), with P = e^avg < 1
        return avg - jnp.log(-jnp.expm1(jnp.minimum(avg, -1e-6)))

    ratio = log_odds(avg_c) - log_odds(avg_r)
    odds_term = -jax.nn.log_sigmoid(ratio)
    metrics = {**_pair_metrics(lam * avg_c, lam * avg_r), "orpo/log_odds_ratio": ratio,
               "orpo/nll": nll}
    return nll + lam * odds_term, metrics


def awr_loss(policy_logp, rewards, baseline, *, temperature: float = 1.0,
             max_weight: float = 20.0):
    """Advantage-weighted regression (Peng et al. 2019, eq. 7, after Neumann & Peters 2009):
    −w·log π(y|x) with w = min(exp((R − b)/τ), w_max), a weight without gradient. With b = 0 this
    is reward-weighted regression (Peters & Schaal 2007). Returns (loss [B], metrics: the weights
    and whether each was clipped)."""
    lp, r, b = _f32(policy_logp, rewards, baseline)
    raw = jnp.exp((r - b) / temperature)
    weight = jax.lax.stop_gradient(jnp.minimum(raw, max_weight))
    return -weight * lp, {"awr/weight": weight,
                          "awr/clipped": (raw > max_weight).astype(jnp.float32)}


def filtered_bc_loss(policy_logp, rewards, valid=None, *, top_fraction: float = 0.5):
    """Filtered behaviour cloning (the "improve" step of ReST, Gulcehre et al. 2023; RAFT, Dong
    et al. 2023): maximise log π(y|x) on the ⌈top_fraction·n⌉ highest-reward examples of the
    batch, ignore the rest. Returns (loss [B], 0 for dropped examples; metrics with the kept
    mask and the reward threshold)."""
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction={top_fraction}: expected 0 < f <= 1")
    lp, r = _f32(policy_logp, rewards)
    valid = jnp.ones(r.shape, bool) if valid is None else jnp.asarray(valid, bool)
    n_valid = jnp.sum(valid)
    k = jnp.maximum(jnp.ceil(top_fraction * n_valid), 1.0)
    # rank of each valid example by reward, best first (ties broken by position)
    key = jnp.where(valid, r, -jnp.inf)
    order = jnp.argsort(-key, stable=True)
    rank = jnp.empty_like(order).at[order].set(jnp.arange(r.shape[0]))
    keep = valid & (rank < k)
    threshold = jnp.min(jnp.where(keep, r, jnp.inf))
    return jnp.where(keep, -lp, 0.0), {"bc/kept": keep.astype(jnp.float32),
                                       "bc/threshold": threshold}
