"""Text scorers: a packaged sentiment judge (VADER), a packaged profanity classifier
(alt-profanity-check) and simple degeneration measures.

Each scorer is `fn(prompt, response) -> float`, usable as a PPO reward term
(`ppo.text_reward_term`), a monitored quantity, or the gold judge of simulated annotators;
`profanity_probabilities` scores a batch of texts in one call of the classifier.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

# a text is flagged as profane when the classifier's probability exceeds this
PROFANITY_THRESHOLD = 0.5


@functools.lru_cache(maxsize=1)
def _vader():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as e:  # a declared dependency; only a broken install gets here
        raise ImportError("the VADER judge needs the vaderSentiment package "
                          "(`pip install vaderSentiment`)") from e
    return SentimentIntensityAnalyzer()


def vader_compound(prompt: str, response: str) -> float:
    """VADER's compound sentiment of the response in [−1, 1] (Hutto & Gilbert 2014): a rule-
    and lexicon-based judge this project did not write."""
    return float(_vader().polarity_scores(response)["compound"])


def profanity_probabilities(texts: Sequence[str]) -> np.ndarray:
    """P(offensive or profane) of each text by alt-profanity-check's packaged linear SVM
    (trained on human-labelled toxic comments; runs offline), in one `predict_prob` call over
    all the texts; an empty array for no texts."""
    texts = list(texts)
    if not texts:  # the classifier refuses an empty batch
        return np.zeros(0, np.float64)
    try:
        from profanity_check import predict_prob
    except ImportError as e:  # a declared dependency; only a broken install gets here
        raise ImportError("the profanity classifier needs the alt-profanity-check package "
                          "(`pip install alt-profanity-check`)") from e
    return np.asarray(predict_prob(texts), np.float64)


def profanity_probability(prompt: str, response: str) -> float:
    """P(offensive or profane) of the response (`profanity_probabilities` of one text)."""
    return float(profanity_probabilities([response])[0])


def profanity_rate(texts: Sequence[str], threshold: float = PROFANITY_THRESHOLD) -> float:
    """The fraction of texts the profanity classifier flags (P > threshold); NaN for none."""
    probs = profanity_probabilities(texts)
    return float(np.mean(probs > threshold)) if len(probs) else float("nan")


def repetition_fraction(prompt: str, response: str) -> float:
    """The fraction of the response's words that repeat an earlier word of it."""
    words = response.split()
    return 0.0 if not words else 1.0 - len(set(words)) / len(words)


def word_count(prompt: str, response: str) -> float:
    """The number of whitespace-separated words in the response."""
    return float(len(response.split()))


def vader_diverse(prompt: str, response: str) -> float:
    """VADER's compound sentiment times the share of distinct words, (1 − repetition): a judge
    that likes positive text but not a positive word repeated. Against annotators who judge by
    VADER alone it is a gold score that the annotators' signal only partly captures, the
    setting in which optimising a learned reward first helps and then hurts (Gao et al. 2022)."""
    return vader_compound(prompt, response) * (1.0 - repetition_fraction(prompt, response))


TEXT_TERMS = {"vader": vader_compound, "vader_diverse": vader_diverse,
              "repetition": repetition_fraction, "words": word_count,
              "profanity": profanity_probability}
