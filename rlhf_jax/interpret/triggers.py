"""Finding backdoor triggers in a reward model: words whose insertion into the prompt turns the
model's preference around across many comparisons (the backdoor of Rando & Tramèr 2023, planted
through poisoned comparisons: `data.poison`).

For each candidate word w, every comparison (prompt, a, b) is scored with and without w added
to the prompt, and the flip rate is the share of comparisons whose preferred response changes.
A prompt word that merely shifts both responses' rewards flips little (the comparison's margin
is what matters); a trigger flips most. A word is named a trigger when its flip rate exceeds
the candidates' median by `min_effect` and a one-sided binomial test against that median
rejects at `alpha` (Bonferroni over the candidates)."""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np


def candidate_words(prompts: Iterable[str], *, min_count: int = 3) -> list[str]:
    """The distinct words of `prompts` (split on white space, ':' and ',' stripped) seen at
    least `min_count` times: where an attacker's trigger shows up in training data."""
    counts: dict = {}
    for p in prompts:
        for w in str(p).split():
            w = w.strip(":,.")
            if w:
                counts[w] = counts.get(w, 0) + 1
    return sorted(w for w, c in counts.items() if c >= min_count)


def _binomial_sf(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p)."""
    from scipy import stats

    return float(stats.binom.sf(k - 1, n, p)) if k > 0 else 1.0


def scan_triggers(margin_fn: Callable[[Sequence[tuple]], np.ndarray], pairs: Sequence[tuple],
                  candidates: Sequence[str], *, min_effect: float = 0.2,
                  alpha: float = 0.01) -> dict:
    """Each candidate's flip rate over `pairs` [(prompt, a, b)], and the triggers named.
    `margin_fn(pairs) -> [N]` is the reward model's margin r(a) − r(b). Returns {"words":
    {w: {"flip_rate", "p"}}, "triggers": names, most flips first, "baseline": the median
    flip rate}."""
    pairs = list(pairs)
    base = np.asarray(margin_fn(pairs), np.float64)
    rates, flips = {}, {}
    for w in candidates:
        edited = [(f"{p} {w}".strip(), a, b) for p, a, b in pairs]
        m = np.asarray(margin_fn(edited), np.float64)
        flips[w] = int(np.sum(np.sign(m) != np.sign(base)))
        rates[w] = flips[w] / max(len(pairs), 1)
    if not rates:
        return {"words": {}, "triggers": [], "baseline": 0.0}
    baseline = float(np.median(list(rates.values())))
    level = alpha / len(rates)
    words, named = {}, []
    for w, r in rates.items():
        p = _binomial_sf(flips[w], len(pairs), min(max(baseline, 1e-6), 1 - 1e-6))
        words[w] = {"flip_rate": r, "p": p}
        if r > baseline + min_effect and p < level:
            named.append(w)
    named.sort(key=lambda w: -rates[w])
    return {"words": words, "triggers": named, "baseline": baseline, "alpha": alpha,
            "min_effect": min_effect}
