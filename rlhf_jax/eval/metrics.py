"""Alignment metrics of a policy's evaluated responses, each with a standard error: the mean of a
per-response quantity, distinct-n diversity (a corpus statistic, bootstrapped) and the win rate
against the reference policy judged by the gold score."""
from __future__ import annotations

from typing import Sequence

import numpy as np

# distinct-n's standard error: a bootstrap over responses with this many resamples and this seed
BOOTSTRAP_RESAMPLES = 200
BOOTSTRAP_SEED = 0
# the bootstrap works on [resamples, pairs] arrays in blocks of resamples of about this many cells
_BLOCK_CELLS = 2 ** 24


def mean_se(values) -> dict:
    """Mean and its standard error, std (ddof=1) / √n; the error is 0 for one value and both
    are NaN for none."""
    values = np.asarray(values, np.float64)
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "stderr": float("nan")}
    return {"mean": float(values.mean()),
            "stderr": float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0}


def _ngrams(text: str, n: int) -> list[tuple]:
    words = text.split()
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
    Conversation Models", §4.2): the number of distinct n-grams over all the texts "scaled by
    the total number of generated tokens", words split at whitespace (case kept) as the tokens,
    the same denominator for every n. A text shorter than n words adds tokens but no n-gram;
    NaN when the texts have no words. (Some libraries divide by the number of n-grams instead,
    which gives larger distinct-2 on short responses.)"""
    if n < 1:
        raise ValueError(f"n={n}: expected an n-gram order >= 1")
    grams = {g for t in texts for g in _ngrams(t, n)}
    tokens = sum(len(t.split()) for t in texts)
    return len(grams) / tokens if tokens else float("nan")


def distinct_n_bootstrap(texts: Sequence[str], n: int, *, resamples: int = BOOTSTRAP_RESAMPLES,
                         seed: int = BOOTSTRAP_SEED) -> dict:
    """Distinct-n of `texts` (`distinct_n`) with its standard error by a bootstrap over
    responses (Efron & Tibshirani 1993, ch. 6): resample b draws len(texts) responses with
    replacement, row b of `np.random.default_rng(seed).integers(0, N, (resamples, N))`, and
    the error is the standard deviation (ddof=1) of distinct-n over the resamples (those with
    no n-gram left out). Vectorised: every resample's n-gram total and distinct count come
    from array operations over (response, distinct n-gram) pairs, no loop over resamples."""
    if resamples < 2:
        raise ValueError(f"resamples={resamples}: expected >= 2 for a standard deviation")
    value = distinct_n(texts, n)
    count = len(texts)
    if count == 0 or not np.isfinite(value):
        return {"mean": value, "stderr": float("nan")}
    ids, pair_text, pair_gram, totals = {}, [], [], np.zeros(count, np.float64)
    for i, t in enumerate(texts):  # each response's distinct n-grams, as integer ids
        grams = _ngrams(t, n)
        totals[i] = len(t.split())
        for g in set(grams):
            pair_text.append(i)
            pair_gram.append(ids.setdefault(g, len(ids)))
    pair_text, pair_gram = np.asarray(pair_text, np.int64), np.asarray(pair_gram, np.int64)
    order = np.argsort(pair_gram, kind="stable")  # pairs grouped by n-gram
    pair_text = pair_text[order]
    starts = np.flatnonzero(np.r_[True, np.diff(pair_gram[order]) != 0])
    draws = np.random.default_rng(seed).integers(0, count, (resamples, count))
    # multiplicity of each response in each resample: [resamples, count]
    picks = np.bincount((np.arange(resamples)[:, None] * count + draws).ravel(),
                        minlength=resamples * count).reshape(resamples, count)
    total = picks @ totals
    distinct = np.zeros(resamples)
    block = max(1, _BLOCK_CELLS // max(len(pair_text), 1))  # bounds the [block, pairs] array
    for s in range(0, resamples if len(pair_text) else 0, block):  # an n-gram counts once if any drawn response has it
        drawn = picks[s:s + block, pair_text] > 0
        distinct[s:s + block] = np.maximum.reduceat(drawn, starts, axis=1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = np.where(total > 0, distinct / total, np.nan)
    reps = reps[np.isfinite(reps)]
    return {"mean": value,
            "stderr": float(reps.std(ddof=1)) if len(reps) > 1 else float("nan")}


def win_rate(rows: Sequence[dict], reference_rows: Sequence[dict]) -> dict:
    """Win rate against the reference judged by the gold score: row i of `rows` and of
    `reference_rows` answer the same prompt (as `evaluate_policy` and `evaluate_best_of_n`
    give them for the same prompts), and the policy wins 1 if its gold score is higher, 0.5
    on a tie, 0 otherwise; the mean ± standard error (std ddof=1 / √n) of the wins. NaN when
    a gold score is missing (NaN)."""
    if len(rows) != len(reference_rows):
        raise ValueError(f"win rate: {len(rows)} rows against {len(reference_rows)} reference "
                         "rows; expected one reference row per row, for the same prompts")
    for i, (r, ref) in enumerate(zip(rows, reference_rows)):
        if r["prompt"] != ref["prompt"]:
            raise ValueError(f"win rate: row {i} answers prompt {r['prompt']!r} but reference "
                             f"row {i} answers {ref['prompt']!r}; expected the same prompts "
                             "in the same order")
    gold = np.array([r["gold"] for r in rows], np.float64)
    ref_gold = np.array([r["gold"] for r in reference_rows], np.float64)
    if not (np.all(np.isfinite(gold)) and np.all(np.isfinite(ref_gold))):
        return {"mean": float("nan"), "stderr": float("nan")}
    return mean_se(np.where(gold > ref_gold, 1.0, np.where(gold == ref_gold, 0.5, 0.0)))
