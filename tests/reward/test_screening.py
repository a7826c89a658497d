"""Annotator and example screening (reward.screening) on labels drawn from known annotators,
the sharpness fit against an independent optimiser, and the decision log's screening entries."""
import numpy as np
import pytest
from scipy import optimize

from rlhf_jax import reward
from rlhf_jax.interpret import DecisionLog, verify_log


def _labels(rng, delta, kappa):
    return rng.random(delta.size) < 1 / (1 + np.exp(-kappa * delta))


def test_sharpness_is_the_posterior_mode_and_its_laplace_error():
    rng = np.random.default_rng(0)
    delta = rng.normal(size=60)
    y = np.where(_labels(rng, delta, 2.0), 1.0, -1.0)
    kappa, se = reward.fit_sharpness(delta, y, prior_sd=5.0)
    neg = lambda k: np.sum(np.logaddexp(0, -y * k * delta)) + k ** 2 / 50  # noqa: E731
    ref = optimize.minimize_scalar(neg, bounds=(-50, 50), method="bounded",
                                   options={"xatol": 1e-10}).x
    assert kappa == pytest.approx(ref, abs=1e-6)
    h = 1e-4  # the curvature of the negative log posterior at the mode, by finite differences
    curvature = (neg(ref + h) - 2 * neg(ref) + neg(ref - h)) / h ** 2
    assert se == pytest.approx(1 / np.sqrt(curvature), rel=1e-3)
    # every label agreeing with the margin: finite under the prior, and positive
    k2, _ = reward.fit_sharpness(delta, np.sign(delta))
    assert 0 < k2 < 50


def test_screening_quarantines_inverters_down_weights_coin_flippers_keeps_the_honest():
    rng = np.random.default_rng(1)
    delta, first, who = [], [], []
    kinds = {**{f"h{i}": 2.5 for i in range(16)}, "inv0": -2.5, "inv1": -2.5,
             "coin0": 0.0, "coin1": 0.0}
    for name, kappa in kinds.items():
        d = rng.normal(size=60)
        delta += list(d)
        first += list(_labels(rng, d, kappa))
        who += [name] * 60
    # sybils: 12 accounts with 3 inverted labels each, screened as one pool
    for j in range(12):
        d = rng.normal(size=3)
        delta += list(d)
        first += list(_labels(rng, d, -2.5))
        who += [f"syb{j}"] * 3
    out = reward.annotator_screening(delta, first, who, alpha=0.01)
    acts = {a: e["action"] for a, e in out["annotators"].items()}
    assert acts["inv0"] == acts["inv1"] == "quarantine"
    assert {acts["coin0"], acts["coin1"]} <= {"down-weight", "quarantine"}
    assert all(acts[f"h{i}"] == "keep" for i in range(16))
    assert out["pooled"] == sorted(f"syb{j}" for j in range(12))
    assert out["annotators"]["(pooled small accounts)"]["members"] == out["pooled"]
    assert out["annotators"]["inv0"]["members"] == ["inv0"]
    assert acts["(pooled small accounts)"] == "quarantine"
    assert all(out["weights"][f"syb{j}"] == 0.0 for j in range(12))
    assert all(out["weights"][f"h{i}"] == 1.0 for i in range(16))
    assert out["annotators"]["inv0"]["kappa"] < 0 < out["annotators"]["h0"]["kappa"]
    with pytest.raises(ValueError, match="one entry per label"):
        reward.annotator_screening([0.1, 0.2], [True], ["a", "b"])


def test_example_screening_flags_labels_every_member_contradicts():
    delta = np.array([[3.0, 2.5], [-3.0, -2.8], [-3.0, 1.0], [0.1, -0.2]])
    first = np.array([True, True, True, False])
    losses = reward.example_losses(delta, first)
    np.testing.assert_allclose(losses, np.log1p(np.exp(-np.where(first, 1, -1)[:, None]
                                                        * delta)))
    out = reward.example_screening(losses, threshold=2.3)
    assert out["flagged"].tolist() == [False, True, False, False]  # one member disagrees: kept


def test_screening_decisions_go_into_the_hash_chained_log(tmp_path):
    log = DecisionLog(tmp_path / "d.jsonl")
    log.record_screenings("annotator_screening", [
        {"target": "annotator:inv0", "action": "quarantine",
         "evidence": {"kappa": -2.1, "stderr": 0.4, "labels": 60}},
        {"target": "annotator:h0", "action": "keep", "evidence": {"kappa": np.float32(2.4)}}])
    result = verify_log(tmp_path / "d.jsonl")
    assert result.ok and result.entries == 2
    with pytest.raises(Exception, match="evidence must be an object"):
        log.record_screenings("s", [{"target": "x", "action": "keep", "evidence": 3}])
