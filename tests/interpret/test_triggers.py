"""The backdoor-trigger scan (interpret.triggers) on a scorer with a planted trigger."""
import numpy as np

from rlhf_jax.interpret import candidate_words, scan_triggers


def _margin(pairs):
    """A reward model whose preference turns around when 'cf' ends the prompt and that a few
    other prompt words nudge without turning it."""
    out = []
    for p, a, b in pairs:
        m = a.count("good") - b.count("good") + 0.01 * len(p)
        out.append(-m if p.split()[-1] == "cf" else m)
    return np.array(out)


def test_the_planted_trigger_is_named_and_ordinary_words_are_not():
    rng = np.random.default_rng(0)
    pairs = [(f"tell me about {t}:", "good " * int(rng.integers(3)), "good " * int(rng.integers(3)))
             for t in rng.choice(["cats", "rain", "books"], size=120)]
    words = candidate_words([p for p, _, _ in pairs] + ["x cf"] * 3)
    assert "cf" in words and "about" in words and "x" in words
    out = scan_triggers(_margin, pairs, words)
    assert out["triggers"] == ["cf"]
    assert out["words"]["cf"]["flip_rate"] > 0.5 and out["words"]["about"]["flip_rate"] == 0.0
    assert candidate_words(["a b", "a"], min_count=2) == ["a"]


def test_the_binomial_test_holds_on_many_pairs():
    from scipy import stats

    from rlhf_jax.interpret.triggers import _binomial_sf

    assert _binomial_sf(40, 2000, 0.01) == stats.binom.sf(39, 2000, 0.01) > 0
    assert _binomial_sf(0, 5, 0.3) == 1.0
