"""The rise-and-fall test on a score followed over training, and its check against a final
evaluation: both ways on constructed trajectories, and its parts against scipy and by hand."""
import numpy as np
import pytest
from scipy import stats

from rlhf_jax.eval.trends import below_peak, rise_and_fall, welch_greater


def _trajectory(shape: str, n: int = 150, noise: float = 0.1, seed: int = 0) -> np.ndarray:
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    trend = {"rise_fall": np.where(t < 40, 0.2 + 0.55 * t / 40, 0.75 - 0.6 * (t - 40) / 110),
             "rise": 0.2 + t / n, "flat": np.full(n, 0.3),
             "fall": 0.8 - t / n}[shape]
    return trend + rng.normal(0, noise, n)


def test_welch_greater_is_scipys_one_sided_welch_test():
    rng = np.random.default_rng(1)
    for _ in range(5):
        a, b = rng.normal(0.3, 1, 7), rng.normal(0, 2, 11)
        ref = stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
        assert welch_greater(a, b) == pytest.approx(ref, rel=1e-10)
    # by hand: means 2 and 1, variances 1 and 1, n = 3 each: t = 1 / √(2/3), df = 4
    a, b = [1.0, 2.0, 3.0], [0.0, 1.0, 2.0]
    assert welch_greater(a, b) == pytest.approx(stats.t.sf(1 / np.sqrt(2 / 3), 4))
    assert welch_greater([1.0, 1.0], [0.0, 0.0]) == 0.0
    assert welch_greater([0.0, 0.0], [1.0, 1.0]) == 1.0


def test_rise_and_fall_is_found_where_it_happens_and_nowhere_else():
    kl = np.arange(150) * 0.3
    found = rise_and_fall(_trajectory("rise_fall"), kl=kl)
    assert found["observed"] and found["p_rise"] < 1e-4 and found["p_fall"] < 1e-4
    assert 30 <= found["peak_step"] <= 55 and found["peak"] > found["start"] + 0.3
    assert found["end"] < found["peak"] - 0.3
    assert found["kl_at_peak"] == pytest.approx(0.3 * (found["peak_step"] - 1), abs=2.5)
    assert found["kl_at_end"] > found["kl_at_peak"]
    for shape in ("rise", "flat", "fall"):
        assert not rise_and_fall(_trajectory(shape), kl=kl)["observed"], shape
    rising = rise_and_fall(_trajectory("rise"))
    assert rising["p_rise"] < 1e-4 and rising["p_fall"] == 1.0  # the peak is at the end


def test_rise_and_fall_holds_its_level_on_noise():
    """Pure noise: the intersection–union test at α = 0.05 flags at most 5% of runs."""
    flagged = [rise_and_fall(np.random.default_rng(s).normal(0, 0.1, 60))["observed"]
               for s in range(400)]
    assert np.mean(flagged) <= 0.05


def test_ten_noisy_iterations_are_not_enough():
    out = rise_and_fall([0.1, 0.5, 0.9, 0.5, 0.1, 0.5, 0.9, 0.5, 0.1, 0.0])
    assert not out["observed"] and "10 iterations are too few" in out["reason"]
    out = rise_and_fall([0.1] * 11 + [float("nan")] * 3)
    assert not out["observed"] and "not finite" in out["reason"]


def test_below_peak_is_a_one_sided_z_test_against_the_unbiased_peak():
    trend = {"peak_test": 0.7, "peak_test_se": 0.03}
    out = below_peak(trend, {"mean": 0.62, "stderr": 0.04})
    z = 0.08 / 0.05  # hand-computed: √(0.03² + 0.04²) = 0.05
    assert out["z"] == pytest.approx(z) and out["p"] == pytest.approx(stats.norm.sf(z))
    assert not out["confirmed"]  # p = 0.055: the evaluation does not confirm a fall
    assert below_peak(trend, {"mean": 0.5, "stderr": 0.02})["confirmed"]
    assert not below_peak(trend, {"mean": 0.75, "stderr": 0.02})["confirmed"]
    assert below_peak({"peak_test": 0.7, "peak_test_se": 0.0},
                      {"mean": 0.5, "stderr": 0.0})["p"] == 0.0
