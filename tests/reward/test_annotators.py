"""Annotator models: the per-annotator Bradley–Terry likelihood against a float64 formula,
Dawid–Skene against crowd-kit's implementation, and reliability recovered from agreement."""
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from crowdkit.aggregation import DawidSkene
from scipy.stats import spearmanr

from rlhf_jax.reward import annotators as ann


def test_log_likelihood_matches_float64():
    rng = np.random.default_rng(0)
    delta = rng.normal(0, 2, 50)
    first = rng.random(50) < 0.5
    who = rng.integers(-1, 4, 50)
    params = {"log_temperature": jnp.asarray(rng.normal(0, 0.5, 4), jnp.float32),
              "bias": jnp.asarray(rng.normal(0, 0.5, 4), jnp.float32)}
    got = ann.annotator_log_likelihood(jnp.asarray(delta, jnp.float32), first, who, params)
    s = np.asarray(params["log_temperature"], np.float64)
    tau = np.exp(s - s.mean())
    b = np.asarray(params["bias"], np.float64)
    z = np.where(who >= 0, delta / tau[np.maximum(who, 0)] + b[np.maximum(who, 0)], delta)
    want = np.where(first, -np.logaddexp(0, -z), -np.logaddexp(0, z))
    # float32 with |z| ≲ 20: log σ is accurate to a few ulps of its O(1) value
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert float(jnp.mean(jnp.log(ann.temperatures(params)))) == pytest.approx(0.0, abs=1e-6)


def _simulate(temps, n_items=400, per_item=4, seed=0, bias=None):
    rng = np.random.default_rng(seed)
    gap = rng.normal(0, 1.5, n_items)  # gold Δ of each item (first minus second)
    truth = (gap > 0).astype(int)
    items, who, labels = [], [], []
    for i in range(n_items):
        for a in rng.choice(len(temps), per_item, replace=False):
            z = gap[i] / temps[a] + (0 if bias is None else bias[a])
            labels.append(int(rng.random() < 1 / (1 + np.exp(-z))))
            items.append(i)
            who.append(a)
    return np.array(items), np.array(who), np.array(labels), truth


def test_dawid_skene_matches_crowd_kit():
    items, who, labels, _ = _simulate([0.2, 0.5, 1.0, 2.0, 4.0], n_items=150, per_item=3)
    ours = ann.dawid_skene(items, who, labels, iterations=25, tol=-np.inf, smoothing=0.0)
    df = pd.DataFrame({"task": items, "worker": who, "label": labels})
    ref = DawidSkene(n_iter=25, tol=-np.inf).fit(df)
    # crowd-kit keeps one more M-step than it returns posteriors for: compare like with like
    np.testing.assert_allclose(ours["posterior"], ref.probas_.sort_index().to_numpy(),
                               rtol=1e-9, atol=1e-12)  # float64, same EM sequence
    np.testing.assert_allclose(ours["prior"], ref.priors_.sort_index().to_numpy(), rtol=1e-9)
    assert len(ours["log_likelihood"]) == 25
    assert np.all(np.diff(ours["log_likelihood"]) > -1e-9)  # EM never decreases it


def test_reliability_from_agreement_ranks_the_annotators():
    # accuracies E σ(|Δ|/τ) ≈ 0.96, 0.90, 0.75, 0.61, 0.54 are several standard errors apart
    # at ~900 labels each, so the true order is recovered unless the estimate is wrong
    temps = [0.1, 0.3, 0.9, 2.7, 8.1]
    n = 1500
    items, who, labels, truth = _simulate(temps, n_items=n, per_item=3, seed=1)
    out = ann.dawid_skene(items, who, labels)
    rho = spearmanr(out["accuracy"], -np.asarray(temps)).statistic
    assert rho >= 0.9, (rho, out["accuracy"])
    print("Dawid-Skene accuracies", out["accuracy"].round(3), "Spearman", rho)
    # the posterior's verdict beats majority vote's against the truth
    mv = np.bincount(items, weights=labels, minlength=n) / np.bincount(items, minlength=n)
    ds_acc = np.mean((out["posterior"][:, 1] > 0.5) == truth)
    assert ds_acc >= np.mean((mv > 0.5) == truth)
    with pytest.raises(ValueError, match="labels must be in"):
        ann.dawid_skene([0], [0], [2])
