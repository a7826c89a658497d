"""The method comparison's over-optimisation check."""
from rlhf_jax.studies.compare_report import rises_then_falls


def test_rises_then_falls_detects_the_shape():
    up_down = [{"gold": g, "kl": i} for i, g in enumerate([0, .1, .2, .4, .6, .8, .8, .6, .4,
                                                           .2, .1, 0, 0])]
    assert rises_then_falls(up_down)["observed"]
    rising = [{"gold": i / 10, "kl": i} for i in range(12)]
    assert not rises_then_falls(rising)["observed"]
    assert rises_then_falls(rising[:3]) == {"observed": False, "reason": "3 iterations are "
                                                                         "too few"}
