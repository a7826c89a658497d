"""Tests on a score followed over training iterations: did it rise and then fall (the
over-optimisation shape of Gao et al. 2022, fig. 1), and does a later evaluation confirm that it
ended below its peak.

Each iteration's score is a mean over that iteration's samples, so the trajectory is noisy, and
the highest point of a noisy curve sits above its trend (the winner's curse). `rise_and_fall`
therefore splits the iterations: the even ones locate the peak, the odd ones test it
(sample splitting, Cox 1975, "A note on data-splitting for the evaluation of significance
levels"), so choosing the peak does not bias the test.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

# the test's name, as the reports print it
RISE_AND_FALL_TEST = (
    "sample splitting: the even iterations locate the peak of the running mean, the odd ones "
    "test it; one-sided Welch t-tests of the odd iterations' scores at the peak against those "
    "at the start (rise) and at the end (fall), both at level α (an intersection–union test)")


def welch_greater(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided p-value of Welch's t-test (Welch 1947) for mean(a) > mean(b): t = (ā − b̄) /
    √(s_a²/n_a + s_b²/n_b) with the Welch–Satterthwaite degrees of freedom. 1.0 when both
    samples are constant and ā ≤ b̄, 0.0 when they are constant and ā > b̄."""
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return 0.0 if a.mean() > b.mean() else 1.0
    t = (a.mean() - b.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(stats.t.sf(t, df))


def _nearest(positions: np.ndarray, centre: float, k: int) -> np.ndarray:
    """The k consecutive entries of sorted `positions` whose middle is nearest `centre`."""
    starts = np.arange(len(positions) - k + 1)
    mid = (positions[starts] + positions[starts + k - 1]) / 2
    s = int(starts[np.argmin(np.abs(mid - centre))])
    return np.arange(s, s + k)


def rise_and_fall(values: Sequence[float], *, kl: Optional[Sequence[float]] = None,
                  steps: Optional[Sequence[int]] = None, window: Optional[int] = None,
                  alpha: float = 0.05) -> dict:
    """Whether a per-iteration score rose and then fell, by a test (`RISE_AND_FALL_TEST`).

    The iterations are split into the even (0, 2, 4, ...) and the odd ones. On the even ones the
    running mean over `window` points (default: a fifth of them, 2 to 8) locates the peak. On
    the odd ones three windows of `window` points each are compared: at the start, nearest the
    peak and at the end; `p_rise` and `p_fall` are one-sided Welch t-tests (`welch_greater`) of
    the peak window against the start and end windows. `observed` when both are below `alpha`:
    a rise and then a fall, at level `alpha` (an intersection–union test, Berger 1982). A peak
    whose window overlaps the start's or the end's is not a rise or not a fall (p = 1).

    Also the descriptive numbers, over all iterations: the running mean (over 2 × `window`
    iterations, the span of a test window) at the start, at the located peak and at the end,
    with the step and KL (`kl`, when given) there. Fewer than 12 iterations cannot be tested
    (three windows of two points in each half): `observed` is False with the `reason`."""
    y = np.asarray(values, np.float64)
    n = len(y)
    steps = np.arange(1, n + 1) if steps is None else np.asarray(steps)
    if n < 12:
        return {"observed": False, "iterations": n, "test": RISE_AND_FALL_TEST,
                "reason": f"{n} iterations are too few to test (at least 12)"}
    if not np.all(np.isfinite(y)):
        return {"observed": False, "iterations": n, "test": RISE_AND_FALL_TEST,
                "reason": "the score is missing (not finite) at some iterations"}
    locate, test = np.arange(0, n, 2), np.arange(1, n, 2)
    w = window or int(np.clip(len(test) // 5, 2, 8))
    w = max(2, min(w, len(test) // 3))
    run = np.convolve(y[locate], np.ones(w) / w, "valid")
    j = int(np.argmax(run))
    centre = float(locate[j] + locate[j + w - 1]) / 2  # the middle of the peak's window
    first, last = np.arange(w), np.arange(len(test) - w, len(test))
    at_peak = _nearest(test.astype(np.float64), centre, w)
    yt = y[test]
    p_rise = 1.0 if at_peak[0] <= first[-1] else welch_greater(yt[at_peak], yt[first])
    p_fall = 1.0 if at_peak[-1] >= last[0] else welch_greater(yt[at_peak], yt[last])
    span = min(2 * w, n)
    kernel = np.ones(span) / span
    smooth = lambda x: np.convolve(np.asarray(x, np.float64), kernel, "valid")  # noqa: E731
    ys = smooth(y)
    peak_i = int(np.clip(round(centre - (span - 1) / 2), 0, len(ys) - 1))
    out = {"observed": bool(p_rise < alpha and p_fall < alpha), "p_rise": p_rise,
           "p_fall": p_fall, "alpha": alpha, "window": w, "iterations": n,
           "test": RISE_AND_FALL_TEST, "start": float(ys[0]), "peak": float(ys[peak_i]),
           "end": float(ys[-1]), "peak_step": int(steps[peak_i + span // 2]),
           "end_step": int(steps[-1]),
           # the peak as the odd iterations measure it: no selection bias (`below_peak`)
           "peak_test": float(yt[at_peak].mean()),
           "peak_test_se": float(yt[at_peak].std(ddof=1) / np.sqrt(w))}
    if kl is not None:
        k = smooth(kl)
        out["kl_at_peak"], out["kl_at_end"] = float(k[peak_i]), float(k[-1])
    return out


def below_peak(trend: dict, after: dict, *, alpha: float = 0.05) -> dict:
    """Whether an evaluation of the final policy (`after`: {"mean", "stderr"} over its own
    samples) confirms that the score ended below the peak `rise_and_fall` found: a one-sided
    z-test of peak − after > 0, where the peak is the mean of the odd iterations' window at
    the peak (`peak_test`, not used to locate it, so not biased upwards) with its standard
    error, z = (peak − after) / √(se_peak² + se_after²). Assumes the training iterations and
    the evaluation score the same kind of prompts with the same judge."""
    from scipy import stats

    diff = trend["peak_test"] - after["mean"]
    se = float(np.hypot(trend["peak_test_se"], after["stderr"]))
    if se > 0 and np.isfinite(se):
        z, p = diff / se, float(stats.norm.sf(diff / se))
    else:
        z, p = float("nan"), 0.0 if diff > 0 else 1.0
    return {"after": after["mean"], "after_stderr": after["stderr"], "peak": trend["peak_test"],
            "z": float(z), "p": p, "confirmed": bool(p < alpha), "alpha": alpha}
