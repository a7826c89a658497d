"""Reward-model evaluation on held-out comparisons, normalisation, ensemble statistics."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def expected_calibration_error(prob_chosen: np.ndarray, num_bins: int = 10) -> float:
    """ECE (Guo et al. 2017, eq. 3) of the predicted preference σ(Δr).

    The prediction is "the response with the higher reward is preferred" with confidence
    max(p, 1 − p); bins of equal width over [0.5, 1] compare mean confidence with accuracy.
    """
    p = np.asarray(prob_chosen, np.float64)
    conf = np.maximum(p, 1 - p)
    correct = (p > 0.5).astype(np.float64)
    edges = np.linspace(0.5, 1.0, num_bins + 1)
    ece = 0.0
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        in_bin = (conf >= lo) & ((conf < hi) if i < num_bins - 1 else (conf <= hi))
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def comparison_metrics(reward_chosen: np.ndarray, reward_rejected: np.ndarray,
                       annotator: Optional[np.ndarray] = None,
                       annotator_names: Sequence[str] = ()) -> dict:
    """Pairwise accuracy, Bradley–Terry loss, ECE of σ(Δr), mean margin, per-annotator accuracy."""
    delta = np.asarray(reward_chosen, np.float64) - np.asarray(reward_rejected, np.float64)
    prob = 1.0 / (1.0 + np.exp(-delta))
    out = {"eval/accuracy": float(np.mean(delta > 0)),
           "eval/loss": float(np.mean(np.logaddexp(0.0, -delta))),
           "eval/ece": expected_calibration_error(prob),
           "eval/margin": float(np.mean(delta)), "eval/pairs": float(delta.size)}
    if annotator is not None:
        annotator = np.asarray(annotator)
        for i, name in enumerate(annotator_names):
            sel = annotator == i
            if sel.any():
                out[f"eval/accuracy_annotator/{name}"] = float(np.mean(delta[sel] > 0))
    return out


def normalised_head(gain, bias, rewards: np.ndarray):
    """Gain and bias that give rewards mean 0 and std 1 on a reference sample.

    The head computes r = g·u + b. With μ and σ of r on the reference set (one per ensemble
    member, rewards [N] or [N, M]), the new head g' = g/σ, b' = (b − μ)/σ outputs (r − μ)/σ.
    This is lm-human-preferences' reward normalisation (Ziegler et al. 2019, §2.2).
    """
    r = np.asarray(rewards, np.float64).reshape(len(rewards), -1)
    mu, sigma = r.mean(0), r.std(0)
    if np.any(sigma <= 0):
        raise ValueError("rewards on the reference set are constant; cannot normalise")
    gain, bias = np.asarray(gain, np.float64), np.asarray(bias, np.float64)
    return (gain / sigma).astype(np.float32), ((bias - mu) / sigma).astype(np.float32)


def ensemble_statistics(rewards_nm) -> tuple[jax.Array, jax.Array]:
    """Mean and standard deviation over ensemble members [N, M]; the std is the uncertainty."""
    rewards_nm = jnp.asarray(rewards_nm)
    return rewards_nm.mean(-1), rewards_nm.std(-1)


def write_summary(path, metrics: dict) -> None:
    """Write evaluation metrics as a JSON summary."""
    Path(path).write_text(json.dumps(metrics, indent=2, sort_keys=True))
