"""Comparisons of the built-in task for the active-learning loop and the annotation studies:
random response pairs, their gold margin, simulated annotators who label and rate them, and
pairwise records in shown order."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

from rlhf_jax import data


def builtin_pairs(rng: np.random.Generator, n: int, length: int = 6) -> list[tuple]:
    """n (prompt, response, response) pairs of the built-in task's sentences."""
    out = []
    for _ in range(n):
        prompt = str(rng.choice(data.builtin.PROMPTS))
        a = data.builtin.random_response(rng, length)
        b = data.builtin.random_response(rng, length)
        while b == a:
            b = data.builtin.random_response(rng, length)
        out.append((prompt, a, b))
    return out


def gold_delta(pairs: Sequence[tuple], gold_fn=None) -> np.ndarray:
    """g(first) − g(second) by the gold judge (default: the built-in one)."""
    g = gold_fn or (lambda prompt, text: data.builtin.gold_score(text))
    return np.array([g(p, a) - g(p, b) for p, a, b in pairs], np.float64)


@dataclasses.dataclass(frozen=True)
class SimulatedAnnotators:
    """Annotator a prefers the first-shown response with probability σ(Δ_gold/τ_a + β_a)
    (Bradley–Terry with a temperature and a position bias each)."""

    temperatures: tuple = (0.15, 0.3, 0.6)
    biases: tuple = ()  # per annotator (empty: none)
    gold_fn: Optional[Callable] = None

    def ids(self) -> list[str]:
        """The annotators' ids, sim_0, sim_1, …"""
        return [f"sim_{i}" for i in range(len(self.temperatures))]

    def label(self, pairs: Sequence[tuple], rng: np.random.Generator,
              who: Optional[Sequence[int]] = None) -> list[dict]:
        """One label per pair, by annotator `who[i]` (default: drawn uniformly)."""
        delta = gold_delta(pairs, self.gold_fn)
        if who is None:
            who = rng.integers(len(self.temperatures), size=len(pairs))
        bias = np.asarray(self.biases or [0.0] * len(self.temperatures), np.float64)
        temps = np.asarray(self.temperatures, np.float64)
        z = delta / temps[np.asarray(who)] + bias[np.asarray(who)]
        first = rng.random(len(pairs)) < 1.0 / (1.0 + np.exp(-z))
        return [pair_record(p, first_chosen=bool(f), annotator=f"sim_{int(w)}")
                for p, f, w in zip(pairs, first, who)]

    def rate(self, items: Sequence[tuple], rng: np.random.Generator, noise: float = 1.0,
             scale: tuple = (1, 7)) -> list[dict]:
        """Likert ratings of single responses ((prompt, response) items): round(mid + gold +
        N(0, noise²)), clipped to the scale."""
        g = self.gold_fn or (lambda prompt, text: data.builtin.gold_score(text))
        lo, hi = scale
        mid = (lo + hi) / 2
        out = []
        for p, r in items:
            y = int(np.clip(np.rint(mid + g(p, r) + rng.normal(0, noise)), lo, hi))
            out.append({"prompt": p, "responses": [r], "ranks": [0], "rating": float(y),
                        "annotator_id": "sim_rating"})
        return out


def pair_key(pair: Sequence) -> tuple:
    """A comparison whichever way round its responses are listed: (prompt, {a, b})."""
    return (pair[0], frozenset(pair[1:]))


def pair_record(pair: tuple, *, first_chosen: bool, annotator: str = "") -> dict:
    """A pairwise record in shown order: responses [first shown, second shown], ranks say
    which was chosen."""
    p, a, b = pair
    return {"prompt": p, "responses": [a, b], "ranks": [0, 1] if first_chosen else [1, 0],
            "annotator_id": annotator}
