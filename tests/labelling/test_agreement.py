"""Agreement statistics against independent references: the `krippendorff` package, statsmodels'
fleiss_kappa / aggregate_raters, scipy's binomtest, published values and hand-counted cases.

Tolerances: both sides sum at most a few hundred float64 terms, so they differ by ~1e-15
relatively and rtol=1e-9 is safe; α = 1 − D_o/D_e and κ subtract, so values near 0 also get
atol=1e-12. Published values are compared to the digits printed.
"""
from __future__ import annotations

import math

import krippendorff
import numpy as np
import pytest
from scipy.stats import binomtest
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

from rlhf_jax.labelling.agreement import (counts_from_labels, fleiss_kappa, krippendorff_alpha,
                                          pairwise_agreement, position_bias)

TOL = dict(rtol=1e-9, atol=1e-12)
nan = float("nan")

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers ×
# 12 units, nominal α = 0.743 (None and nan both mark missing values).
K2011 = [[1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
         [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
         [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
         [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan]]

# Fleiss (1971) Table 1: 30 patients × 6 psychiatric diagnoses (1 depression, 2 personality
# disorder, 3 schizophrenia, 4 neurosis, 5 other), as transcribed in R irr's `diagnoses` and
# statsmodels' tests; κ = 0.430 in the paper, 0.4302445 from irr::kappam.fleiss.
FLEISS1971 = np.array([
    [4, 4, 4, 4, 4, 4], [2, 2, 2, 5, 5, 5], [2, 3, 3, 3, 3, 5], [5, 5, 5, 5, 5, 5],
    [2, 2, 2, 4, 4, 4], [1, 1, 3, 3, 3, 3], [3, 3, 3, 3, 5, 5], [1, 1, 3, 3, 3, 4],
    [1, 1, 4, 4, 4, 4], [5, 5, 5, 5, 5, 5], [1, 4, 4, 4, 4, 4], [1, 2, 4, 4, 4, 4],
    [2, 2, 2, 3, 3, 3], [1, 4, 4, 4, 4, 4], [2, 2, 4, 4, 4, 5], [3, 3, 3, 3, 3, 5],
    [1, 1, 1, 4, 5, 5], [1, 1, 1, 1, 1, 2], [2, 2, 4, 4, 4, 4], [1, 3, 3, 5, 5, 5],
    [5, 5, 5, 5, 5, 5], [2, 4, 4, 4, 4, 4], [2, 2, 4, 5, 5, 5], [1, 1, 4, 4, 4, 4],
    [1, 4, 4, 4, 4, 5], [2, 2, 2, 2, 2, 4], [1, 1, 1, 1, 5, 5], [2, 2, 4, 4, 4, 4],
    [1, 3, 3, 3, 3, 3], [5, 5, 5, 5, 5, 5]])


def _random_reliability(rng, level: str) -> np.ndarray:
    """[raters, units] with ~35% missing and at least 2 distinct pairable values."""
    while True:
        raters, units = rng.integers(2, 7), rng.integers(3, 40)
        data = rng.integers(1, 6, (raters, units)).astype(float)
        if level == "interval":
            data = data * 0.75 - 1.5  # non-integer, negative values too
        data[rng.random(data.shape) < 0.35] = np.nan
        pairable = data[:, (~np.isnan(data)).sum(0) >= 2]
        if len(np.unique(pairable[~np.isnan(pairable)])) >= 2:
            return data


def test_alpha_krippendorff_2011_example():
    assert krippendorff_alpha(K2011) == pytest.approx(0.743, abs=5e-4)
    ref = np.array(K2011, dtype=float)
    for level in ("nominal", "ordinal", "interval", "ratio"):
        np.testing.assert_allclose(
            krippendorff_alpha(K2011, level),
            krippendorff.alpha(reliability_data=ref, level_of_measurement=level), **TOL)


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval", "ratio"])
def test_alpha_matches_krippendorff_package(level):
    rng = np.random.default_rng(sum(map(ord, level)))
    for _ in range(40):
        data = _random_reliability(rng, level)
        np.testing.assert_allclose(
            krippendorff_alpha(data, level),
            krippendorff.alpha(reliability_data=data, level_of_measurement=level), **TOL)


def test_alpha_ignores_unpairable_units():
    base = krippendorff_alpha(K2011, "ordinal")
    extra = [row + [v] for row, v in zip(K2011, [nan, 7, nan, nan])]  # a lone, new value
    assert krippendorff_alpha(extra, "ordinal") == base


def test_alpha_nan_without_pairs_or_variation():
    assert math.isnan(krippendorff_alpha([[1, nan], [nan, 2]]))  # no unit has 2 values
    assert math.isnan(krippendorff_alpha([[3, 3, nan], [3, 3, 3]], "interval"))  # D_e = 0
    assert krippendorff_alpha([[1, 2], [1, 2]]) == 1.0


def test_alpha_errors_name_the_argument():
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha(K2011, "cardinal")
    for bad in ([1, 2, 3], np.zeros((2, 2, 2))):
        with pytest.raises(ValueError, match="data must be 2-D"):
            krippendorff_alpha(bad)
    with pytest.raises(ValueError, match="data"):
        krippendorff_alpha([[1, 2], [1]])


def test_fleiss_matches_statsmodels():
    rng = np.random.default_rng(1971)
    for _ in range(40):
        items, cats, raters = rng.integers(2, 30), rng.integers(2, 6), rng.integers(2, 9)
        table = rng.multinomial(raters, rng.dirichlet(np.ones(cats)), size=items)
        if (table.sum(0) == table.sum()).any():
            continue  # one category only: statsmodels divides by zero
        np.testing.assert_allclose(fleiss_kappa(table), sm_fleiss_kappa(table), **TOL)


def test_fleiss_1971_table():
    counts = counts_from_labels(FLEISS1971.T)
    np.testing.assert_array_equal(counts, aggregate_raters(FLEISS1971)[0])
    kappa = fleiss_kappa(counts)
    assert kappa == pytest.approx(0.430, abs=5e-4)
    assert kappa == pytest.approx(0.4302445, abs=5e-8)


def test_fleiss_nan_when_one_category():
    assert math.isnan(fleiss_kappa([[0, 3], [0, 3]]))
    assert fleiss_kappa([[3, 0], [0, 3]]) == 1.0


def test_fleiss_errors_name_the_argument():
    with pytest.raises(ValueError, match="counts row 2 has 2 ratings"):
        fleiss_kappa([[1, 2], [3, 0], [2, 0]])
    with pytest.raises(ValueError, match="counts rows need at least 2"):
        fleiss_kappa([[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="counts must be a non-empty 2-D"):
        fleiss_kappa([1, 2])
    with pytest.raises(ValueError, match="counts must be non-negative"):
        fleiss_kappa([[3, -1], [2, 0]])


def test_counts_from_labels_keeps_units_with_the_modal_count():
    data = [[1, 0, 1, 1, nan, nan],
            [1, 1, nan, 0, nan, nan],
            [0, 1, nan, 1, 1, nan]]  # ratings per unit: 3, 3, 1, 3, 1, 0 -> keep 3
    np.testing.assert_array_equal(counts_from_labels(data), [[1, 2], [1, 2], [1, 2]])
    np.testing.assert_array_equal(counts_from_labels(data, categories=[1, 0, 2]),
                                  [[2, 1, 0], [2, 1, 0], [2, 1, 0]])
    tie = [[1, 2, nan, 2], [1, nan, 2, 2]]  # ratings 2, 1, 1, 2: a tie, broken to the larger
    np.testing.assert_array_equal(counts_from_labels(tie), [[2, 0], [0, 2]])
    assert counts_from_labels([[nan, nan]]).shape == (0, 0)
    with pytest.raises(ValueError, match="categories lacks"):
        counts_from_labels(data, categories=[0])
    with pytest.raises(ValueError, match="categories has duplicates"):
        counts_from_labels(data, categories=[0, 1, 1])


def test_counts_from_labels_matches_aggregate_raters():
    rng = np.random.default_rng(7)
    for _ in range(10):
        labels = rng.integers(0, 4, (rng.integers(2, 20), rng.integers(2, 7)))  # [units, raters]
        np.testing.assert_array_equal(counts_from_labels(labels.T), aggregate_raters(labels)[0])


def test_pairwise_agreement_hand_cases():
    assert pairwise_agreement([[1, 2, 3], [1, 2, 3], [1, 2, 3]]) == 1.0
    assert pairwise_agreement([[0, 1, 0], [1, 0, 1]]) == 0.0
    assert pairwise_agreement([[1], [1], [2]]) == pytest.approx(1 / 3, rel=1e-15)
    # a unit of 3 (1/3), a unit of 2 that agrees (1), units with < 2 ratings ignored
    data = [[1, 5, 7, nan], [1, 5, nan, nan], [2, nan, nan, nan]]
    assert pairwise_agreement(data) == pytest.approx((1 / 3 + 1) / 2, rel=1e-15)
    assert math.isnan(pairwise_agreement([[1, nan], [nan, 2]]))


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (3, 7), (4, 7), (5, 10), (0, 10), (9, 10),
                                 (13, 20), (60, 100), (510, 1000), (4900, 10000),
                                 (50300, 100000), (49684, 99999)])
def test_position_bias_p_value_matches_scipy(k, n):
    out = position_bias(k, n)
    assert out["rate"] == k / n and out["n"] == n
    np.testing.assert_allclose(out["p_value"], binomtest(k, n, 0.5).pvalue, rtol=1e-9, atol=0)


def test_position_bias_no_decisive_labels_and_errors():
    out = position_bias(0, 0)
    assert out["n"] == 0 and math.isnan(out["rate"]) and math.isnan(out["p_value"])
    with pytest.raises(ValueError, match="first_chosen"):
        position_bias(5, 4)
    with pytest.raises(ValueError, match="first_chosen"):
        position_bias(-1, 4)
    with pytest.raises(ValueError, match="decisive"):
        position_bias(0, -1)
