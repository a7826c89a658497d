"""Simulated users of the built-in task, each with known weights over packaged judges, for the
personalised-reward study: user u prefers response a to b with probability
σ(v_u · (g(a) − g(b)) / τ) (Bradley–Terry), where g = (sentiment, profanity aversion, length,
lexical diversity) are judges this project did not write or that are plain counts."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from rlhf_jax import data
from rlhf_jax.eval.scorers import profanity_probabilities, repetition_fraction, vader_compound
from rlhf_jax.studies.pairs import pair_record

JUDGES = ("sentiment", "profanity_aversion", "length", "diversity")

# weights over JUDGES; pairs of users disagree sharply (positive / negative, brief / verbose,
# cautious / blunt)
USERS = {
    "positive": (1.0, 0.5, 0.0, 0.0),
    "negative": (-1.0, 0.0, 0.0, 0.0),
    "brief": (0.5, 0.5, -1.5, 0.0),
    "verbose": (0.5, 0.5, 1.5, 0.0),
    "cautious": (0.3, 2.0, 0.0, 0.0),
    "blunt": (0.0, -1.5, 0.0, 0.3),
    "varied": (0.3, 0.3, 0.0, 1.5),
    "repetitive": (0.3, 0.0, 0.5, -1.5),
}


def judge_features(responses: Sequence[str]) -> np.ndarray:
    """g(y) [N, 4]: VADER's compound sentiment, −P(profane) by the packaged classifier, the
    word count over 10 (at most 1), and the share of distinct words."""
    responses = list(responses)
    profane = profanity_probabilities(responses)
    return np.array([[vader_compound("", r), -p, min(len(r.split()), 10) / 10.0,
                      1.0 - repetition_fraction("", r)] for r, p in zip(responses, profane)],
                    np.float64).reshape(len(responses), len(JUDGES))


def user_pairs(rng: np.random.Generator, n: int, lengths: tuple = (2, 10)) -> list[tuple]:
    """n (prompt, response, response) pairs of the built-in task's sentences, each response of
    a random length in `lengths` (inclusive), so that length is a judge worth having."""
    lo, hi = lengths
    out = []
    for _ in range(n):
        prompt = str(rng.choice(data.builtin.PROMPTS))
        a = data.builtin.random_response(rng, int(rng.integers(lo, hi + 1)))
        b = data.builtin.random_response(rng, int(rng.integers(lo, hi + 1)))
        while b == a:
            b = data.builtin.random_response(rng, int(rng.integers(lo, hi + 1)))
        out.append((prompt, a, b))
    return out


@dataclasses.dataclass(frozen=True)
class SimulatedUsers:
    """Users with known weights (`weights`: {user: weights over JUDGES}) and a common
    Bradley–Terry temperature (their noise)."""

    weights: dict = dataclasses.field(default_factory=lambda: dict(USERS))
    temperature: float = 0.2

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: expected > 0")
        for user, w in self.weights.items():
            if len(w) != len(JUDGES):
                raise ValueError(f"user {user!r}: {len(w)} weights, expected one per judge "
                                 f"{JUDGES}")

    def ids(self) -> list[str]:
        """The users, in a fixed order."""
        return list(self.weights)

    def utility_delta(self, user: str, pairs: Sequence[tuple]) -> np.ndarray:
        """v_u · (g(first) − g(second)) of each pair [N] (the user's gold margin)."""
        g = judge_features([t for _, a, b in pairs for t in (a, b)]).reshape(len(pairs), 2, -1)
        return (g[:, 0] - g[:, 1]) @ np.asarray(self.weights[user], np.float64)

    def label(self, user: str, pairs: Sequence[tuple], rng: np.random.Generator) -> list[dict]:
        """One label by `user` per pair: pairwise records in shown order, `annotator_id` the
        user."""
        z = self.utility_delta(user, pairs) / self.temperature
        first = rng.random(len(pairs)) < 1.0 / (1.0 + np.exp(-z))
        return [pair_record(p, first_chosen=bool(f), annotator=user)
                for p, f in zip(pairs, first)]
