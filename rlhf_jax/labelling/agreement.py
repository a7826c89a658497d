"""Inter-annotator agreement: Krippendorff's alpha, Fleiss' kappa, percent agreement and a
binomial test of position bias. Pure numpy and the standard library.

Reliability data are [raters, units] matrices of numbers with nan (or None) where a rater did not
label a unit; values are compared for equality, so nominal labels must be coded as numbers.
"""
from __future__ import annotations

import math
import operator
from typing import Sequence

import numpy as np

LEVELS = ("nominal", "ordinal", "interval", "ratio")


def _reliability_matrix(data) -> np.ndarray:
    """`data` as a float [raters, units] array with nan for missing (None becomes nan)."""
    try:
        arr = np.array(data, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"data must be a rectangular numeric [raters, units] matrix with nan "
                         f"or None for missing values: {e}") from None
    if arr.ndim != 2:
        raise ValueError(f"data must be 2-D [raters, units], got shape {arr.shape}")
    return arr


def _value_counts(arr: np.ndarray, values: np.ndarray) -> np.ndarray:
    """[units, values] number of raters who gave each unit each value (nan never counts)."""
    counts = np.zeros((arr.shape[1], len(values)), dtype=np.int64)
    rater, unit = np.nonzero(~np.isnan(arr))
    np.add.at(counts, (unit, np.searchsorted(values, arr[rater, unit])), 1)
    return counts


def _delta2(values: np.ndarray, n_v: np.ndarray, level: str) -> np.ndarray:
    """Krippendorff's squared metric differences δ²(c, k) between the sorted distinct values."""
    c, k = values[:, None], values[None, :]
    if level == "nominal":
        return (c != k).astype(float)
    if level == "interval":
        return (c - k) ** 2
    if level == "ratio":  # ((c − k)/(c + k))², taken as 0 where c + k = 0
        s = c + k
        return np.divide(c - k, s, out=np.zeros(s.shape), where=s != 0) ** 2
    idx = np.arange(len(values))
    lo, hi = np.minimum.outer(idx, idx), np.maximum.outer(idx, idx)
    cum = np.cumsum(n_v)  # Σ_{g=c..k} n_g − (n_c + n_k)/2, squared
    return (cum[hi] - cum[lo] + n_v[lo] - (n_v[lo] + n_v[hi]) / 2) ** 2


def krippendorff_alpha(data, level: str = "nominal") -> float:
    """Krippendorff's α = 1 − D_o/D_e of a [raters, units] matrix (nan/None = missing).

    Coincidence-matrix form of Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability":
    units with fewer than 2 values are not pairable and are dropped; o_ck = Σ_u (number of c-k
    pairs of values in u)/(m_u − 1), n_c = Σ_k o_ck, n = Σ_c n_c, and
    α = 1 − (n − 1) Σ o_ck δ²_ck / Σ n_c n_k δ²_ck with the paper's δ² for `level` ("nominal",
    "ordinal" — over the sorted distinct values with marginals n_c —, "interval" or "ratio").
    Returns nan when there are fewer than 2 pairable values or D_e = 0 (one distinct value).
    Memory is O(V²) in the number V of distinct values.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    arr = _reliability_matrix(data)
    arr = arr[:, (~np.isnan(arr)).sum(0) >= 2]  # pairable units
    values = np.unique(arr[~np.isnan(arr)])
    counts = _value_counts(arr, values).astype(float)
    m = counts.sum(1)
    if m.sum() < 2:
        return float("nan")
    weighted = counts / (m - 1)[:, None]
    o = weighted.T @ counts - np.diag(weighted.sum(0))
    n_v = o.sum(0)
    d2 = _delta2(values, n_v, level)
    expected = n_v @ d2 @ n_v
    if expected == 0:
        return float("nan")
    return float(1 - (n_v.sum() - 1) * np.sum(o * d2) / expected)


def fleiss_kappa(counts) -> float:
    """Fleiss' κ = (P̄ − P̄e)/(1 − P̄e) of an [items, categories] table of rater counts.

    Fleiss (1971), "Measuring nominal scale agreement among many raters": p_j = Σ_i n_ij/(N n),
    P_i = (Σ_j n_ij² − n)/(n(n − 1)), P̄ = mean_i P_i, P̄e = Σ_j p_j². Every row must sum to the
    same n ≥ 2. Returns nan when P̄e = 1 (every rating in one category).
    """
    table = np.asarray(counts, dtype=float)
    if table.ndim != 2 or table.shape[0] == 0:
        raise ValueError(f"counts must be a non-empty 2-D [items, categories] table, got shape "
                         f"{table.shape}")
    if (table < 0).any():
        raise ValueError("counts must be non-negative")
    totals = table.sum(1)
    n = totals[0]
    bad = np.flatnonzero(totals != n)
    if len(bad):
        raise ValueError(f"counts row {bad[0]} has {totals[bad[0]]:g} ratings but row 0 has "
                         f"{n:g}: every row needs the same number of raters")
    if n < 2:
        raise ValueError(f"counts rows need at least 2 ratings each, got {n:g}")
    p_j = table.sum(0) / table.sum()
    p_bar = np.mean((np.sum(table ** 2, axis=1) - n) / (n * (n - 1)))
    p_e = np.sum(p_j ** 2)
    if p_e == 1:
        return float("nan")
    return float((p_bar - p_e) / (1 - p_e))


def counts_from_labels(data, categories: Sequence | None = None) -> np.ndarray:
    """Fleiss count table [units, categories] (int64) of a [raters, units] matrix (nan = missing).

    Fleiss (1971) needs the same number of ratings per unit, so only units whose number of
    non-missing ratings equals the most common one are kept; the mode is taken over units with at
    least one rating, ties going to the larger count. Columns follow `categories`, by default
    the sorted distinct values of `data` (including those only in dropped units).
    """
    arr = _reliability_matrix(data)
    observed = np.unique(arr[~np.isnan(arr)])
    if categories is None:
        cats = observed
    else:
        cats = np.asarray(categories, dtype=float).reshape(-1)
        if len(np.unique(cats)) != len(cats):
            raise ValueError(f"categories has duplicates: {list(categories)}")
        missing = np.setdiff1d(observed, cats)
        if len(missing):
            raise ValueError(f"categories lacks values present in data: {missing.tolist()}")
    m = (~np.isnan(arr)).sum(0)
    sizes, freq = np.unique(m[m > 0], return_counts=True)
    if not len(sizes):
        return np.zeros((0, len(cats)), dtype=np.int64)
    keep = arr[:, m == sizes[freq == freq.max()].max()]
    order = np.argsort(cats, kind="stable")
    counts = _value_counts(keep, cats[order])
    out = np.empty_like(counts)
    out[:, order] = counts
    return out


def pairwise_agreement(data) -> float:
    """Observed percent agreement: the mean over units with ≥ 2 ratings of the fraction of rater
    pairs within the unit that gave the same value.

    Fleiss (1971) P_i = Σ_j n_ij(n_ij − 1)/(m_i(m_i − 1)), allowing m_i to vary by unit; nan when
    no unit has 2 ratings.
    """
    arr = _reliability_matrix(data)
    arr = arr[:, (~np.isnan(arr)).sum(0) >= 2]
    if arr.shape[1] == 0:
        return float("nan")
    counts = _value_counts(arr, np.unique(arr[~np.isnan(arr)])).astype(float)
    m = counts.sum(1)
    return float(np.mean(np.sum(counts * (counts - 1), axis=1) / (m * (m - 1))))


def _binom_half_cdf(k: int, n: int) -> float:
    """P(X ≤ k) for X ~ Binomial(n, 1/2) and k < n/2: C(n, k)/2ⁿ (exact integers, one correctly
    rounded division) times Σ_{i ≤ k} C(n, i)/C(n, k), summed downwards until the terms (which
    shrink geometrically) stop changing the sum."""
    head = math.comb(n, k) / 2 ** n
    total, term = 1.0, 1.0
    for i in range(k, 0, -1):
        term *= i / (n - i + 1)  # C(n, i − 1)/C(n, i)
        total += term
        if term < 1e-17 * total:
            break
    return head * total


def position_bias(first_chosen: int, decisive: int) -> dict:
    """How often the response shown first won among `decisive` (non-tie) pairwise labels.

    {"rate": first_chosen/decisive, "n": decisive, "p_value": exact two-sided binomial test of
    rate = 1/2}, the p-value summing the probabilities of outcomes no more likely than the
    observed one (as scipy.stats.binomtest; by symmetry 2·P(X ≤ min(k, n − k)), capped at 1).
    rate and p_value are nan when decisive is 0. Exact in integers, so n of 1e5 and more works.
    """
    k, n = operator.index(first_chosen), operator.index(decisive)
    if n < 0:
        raise ValueError(f"decisive must be >= 0, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"first_chosen must be in [0, decisive={n}], got {k}")
    if n == 0:
        return {"rate": float("nan"), "n": 0, "p_value": float("nan")}
    j = min(k, n - k)
    p = 1.0 if 2 * j + 1 >= n else min(1.0, 2 * _binom_half_cdf(j, n))
    return {"rate": k / n, "n": n, "p_value": p}
