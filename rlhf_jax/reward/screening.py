"""Screening the labels a reward model learns from: which annotators to quarantine or
down-weight, and which examples are outliers (defences against poisoned feedback; the study is
`experiments/robustness.py`).

Annotators. Each annotator a's labels y_i = ±1 (+1: the first-shown response chosen) are read
against a reward model's margins Δ_i = r(first) − r(second) through their own signed
sharpness κ_a (an inverse temperature that may be negative),

    P(y_i = +1) = σ(κ_a · Δ_i),

the annotator model of `reward.annotators` (Raykar et al. 2010) with τ_a = 1/κ_a free in sign:
κ ≈ the crowd's is an honest annotator, κ ≈ 0 one whose labels are coin flips, κ < 0 an
inverter. κ_a is the maximum-likelihood estimate (Newton on the concave 1-D log-likelihood) with
the standard error of its Fisher information; reliability = κ_a / median κ. Accounts with fewer
than `min_labels` labels are screened together as one pool (many small accounts acting alike,
sybils, carry their evidence jointly).

Examples. Across an ensemble's members (each trained on its own bootstrap resample, and best
out of fold), an example whose label every member finds unlikely is one the data as a whole
contradicts (the large-loss screening of noisy-label training, Han et al. 2018, required of
every member). Honest labels that are merely noisy look the same to it: expect its precision to
be the poisoned share of the contradicted labels, not 1.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


POOLED = "(pooled small accounts)"  # the group name of the accounts screened together


def fit_sharpness(delta: np.ndarray, y: np.ndarray, prior_sd: float = 5.0,
                  iterations: int = 100) -> tuple[float, float]:
    """(κ̂, s.e.): the posterior mode of Σ log σ(y·κ·Δ) − κ²/(2·prior_sd²) (Newton; concave in
    κ) and the s.e. of its Laplace approximation, 1/√(Σ Δ² σ(κΔ)(1 − σ(κΔ)) + 1/prior_sd²).
    The prior keeps κ̂ finite when every label agrees (or every one disagrees) with sign Δ,
    where the likelihood alone has no maximum; pass Δ in units of its s.d. over all labels."""
    delta, y = np.asarray(delta, np.float64), np.asarray(y, np.float64)
    kappa, precision = 0.0, 1.0 / prior_sd ** 2
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-kappa * delta))
        grad = float(np.sum(delta * ((y > 0) - p))) - precision * kappa
        info = float(np.sum(delta ** 2 * p * (1 - p))) + precision
        step = grad / info
        kappa += step
        if abs(step) < 1e-10 * max(1.0, abs(kappa)):
            break
    p = 1.0 / (1.0 + np.exp(-kappa * delta))
    return kappa, 1.0 / math.sqrt(float(np.sum(delta ** 2 * p * (1 - p))) + precision)


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def annotator_screening(delta: Sequence[float], first_chosen: Sequence[bool],
                        annotators: Sequence[str], *, alpha: float = 0.01,
                        weak: float = 0.5, min_labels: int = 10) -> dict:
    """Each annotator's (or pooled small accounts') sharpness and the action it earns:

    - "quarantine" (weight 0): an inverter, κ < 0 at one-sided level `alpha` (z = κ̂/s.e.
      below −z_α), or reliability below `weak` at that level (z = (κ̂ − weak·κ_ref)/s.e. below
      −z_α) with κ̂ < 0;
    - "down-weight" (weight = clip(reliability, 0, 1)): reliability below `weak` at level
      `alpha` with κ̂ ≥ 0, a careless annotator;
    - "keep" (weight 1) otherwise.

    `delta` [N]: the reward model's margin first − second on each label, best from a model
    that did not train on that annotator's labels (out of fold: a model fits what it trained on,
    an inverter's labels included); `first_chosen` [N]; `annotators` [N]. Δ is taken in units
    of its s.d. over all labels. Each annotator's evidence: labels, κ̂ ("kappa") and its s.e.,
    reliability, agreement (share of labels on the side of sign Δ), "p_value_inverted" (the
    one-sided p-value of κ < 0: small for an inverter), action, weight and the accounts it
    applies to ("members": the annotator, or every pooled account). Returns
    {"annotators": {id: evidence}, "weights": {id: w}, "reference_kappa", "pooled": ids
    screened as the pool `POOLED`}."""
    delta = np.asarray(delta, np.float64)
    delta = delta / max(float(delta.std()), 1e-12)
    y = np.where(np.asarray(first_chosen, bool), 1.0, -1.0)
    ids = np.asarray([str(a) for a in annotators])
    if not (delta.shape == y.shape == ids.shape):
        raise ValueError("delta, first_chosen and annotators must have one entry per label")
    names, counts = np.unique(ids, return_counts=True)
    small = set(names[counts < min_labels].tolist())
    groups = {a: ids == a for a in names if a not in small}
    if small:
        groups[POOLED] = np.isin(ids, sorted(small))
    fits = {g: fit_sharpness(delta[m], y[m]) for g, m in groups.items()}
    big = [fits[g][0] for g in groups if g != POOLED]
    ref = float(np.median(big if big else [k for k, _ in fits.values()]))
    z_alpha = _z_quantile(alpha)
    out, weights = {}, {}
    for g, m in groups.items():
        kappa, se = fits[g]
        z_sign = kappa / se if se > 0 else float("inf")
        z_weak = (kappa - weak * ref) / se if se > 0 else float("inf")
        reliability = kappa / ref if ref > 0 else float("nan")
        weak_flag = ref > 0 and z_weak < -z_alpha
        if z_sign < -z_alpha or (weak_flag and kappa < 0):
            action, w = "quarantine", 0.0
        elif weak_flag:
            action, w = "down-weight", float(np.clip(reliability, 0.0, 1.0))
        else:
            action, w = "keep", 1.0
        agree = float(np.mean(np.sign(delta[m]) == y[m]))
        members = sorted(small) if g == POOLED else [g]
        out[g] = {"labels": int(m.sum()), "kappa": kappa, "stderr": se,
                  "reliability": reliability, "agreement": agree,
                  "p_value_inverted": _normal_sf(-z_sign), "action": action, "weight": w,
                  "members": members}
        weights.update({a: w for a in members})
    return {"annotators": out, "weights": weights, "reference_kappa": ref,
            "pooled": sorted(small), "alpha": alpha}


def _z_quantile(alpha: float) -> float:
    """z with P(Z > z) = alpha (bisection on the normal tail)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _normal_sf(mid) > alpha else (lo, mid)
    return (lo + hi) / 2


def example_losses(delta_members: np.ndarray, first_chosen: Sequence[bool]) -> np.ndarray:
    """Bradley–Terry loss −log σ(±Δ) of each label under each member [N, M] (`delta_members`
    [N, M]: first − second per member)."""
    y = np.where(np.asarray(first_chosen, bool), 1.0, -1.0)[:, None]
    return np.logaddexp(0.0, -y * np.asarray(delta_members, np.float64))


def example_screening(losses: np.ndarray, *, threshold: float = 2.3) -> dict:
    """Examples whose loss exceeds `threshold` nats in every ensemble member (2.3: each member
    gives the label at most e^−2.3 ≈ 10 %). `losses` [N, M] (`example_losses`). Returns
    {"flagged": bool [N], "min_loss": the smallest loss over members [N], "threshold"}."""
    losses = np.asarray(losses, np.float64)
    if losses.ndim != 2:
        raise ValueError(f"losses: expected [examples, members], got shape {losses.shape}")
    low = losses.min(axis=1)
    return {"flagged": low > threshold, "min_loss": low, "threshold": threshold}
