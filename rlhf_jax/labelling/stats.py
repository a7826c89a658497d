"""What the admin page shows: counts, inter-annotator agreement, position bias, time per label.

A label of K responses is read as its K(K−1)/2 pairwise judgments: for responses i < j the
value is +1 (i preferred), −1 (j preferred) or 0 (tie). Each (task, i, j) is one unit of the
agreement statistics, so pairwise choices and rankings are measured on one scale. Likert ratings
are measured separately, one unit per (task, response), on the interval metric.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Sequence

import numpy as np

from rlhf_jax.labelling import agreement
from rlhf_jax.labelling.entities import Label
from rlhf_jax.labelling.store import LabelStore


def pair_judgments(lab: Label) -> dict:
    """{(i, j): +1 / 0 / −1} for i < j in the task's original response order."""
    r = lab.ranks
    return {(i, j): int(np.sign(r[j] - r[i])) for i in range(len(r))
            for j in range(i + 1, len(r))}


def reliability_matrix(labels: Sequence[Label], values) -> tuple[np.ndarray, list, list]:
    """[annotators, units] matrix (nan = not labelled) from `values(label) -> {unit: value}`;
    units are keyed (task id, *unit)."""
    cells = {}
    for lab in labels:
        for unit, v in values(lab).items():
            if v is not None:
                cells[(lab.annotator_id, (lab.task.id, *unit))] = float(v)
    raters = sorted({a for a, _ in cells})
    units = sorted({u for _, u in cells})
    m = np.full((len(raters), len(units)), np.nan)
    ri, ui = {a: k for k, a in enumerate(raters)}, {u: k for k, u in enumerate(units)}
    for (a, u), v in cells.items():
        m[ri[a], ui[u]] = v
    return m, raters, units


def position_counts(labels: Sequence[Label]) -> tuple[int, int]:
    """(times the response shown first won, decisive two-response labels). Rankings of more
    are left out: their pairwise judgments are not independent trials, so a binomial test over
    them would overstate the evidence."""
    first = decisive = 0
    for lab in labels:
        if len(lab.ranks) != 2 or lab.ranks[0] == lab.ranks[1]:
            continue
        decisive += 1
        first += lab.ranks[lab.shown_order[0]] < lab.ranks[lab.shown_order[1]]
    return first, decisive


def _agreement_with_others(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per rater: (the fraction of their values that equal the majority value of the *other*
    raters on the same unit, over units where others' majority is unique, nan if none; how many
    such units)."""
    out, units = np.full(m.shape[0], np.nan), np.zeros(m.shape[0], dtype=np.int64)
    for a in range(m.shape[0]):
        hits = total = 0
        for u in np.flatnonzero(~np.isnan(m[a])):
            others = m[np.arange(m.shape[0]) != a, u]
            others = others[~np.isnan(others)]
            if not len(others):
                continue
            vals, counts = np.unique(others, return_counts=True)
            if (counts == counts.max()).sum() > 1:
                continue
            total += 1
            hits += vals[counts.argmax()] == m[a, u]
        units[a] = total
        if total:
            out[a] = hits / total
    return out, units


def summarise(store: LabelStore, labels: Sequence[Label]) -> dict:
    """The admin page's numbers, from every stored label."""
    by_annotator = defaultdict(list)
    for lab in labels:
        by_annotator[lab.annotator_id].append(lab)
    counts = store.assignment_counts()
    prefs, raters, units = reliability_matrix(labels, pair_judgments)
    rates, compared = _agreement_with_others(prefs) if len(raters) else ([], [])
    with_others, compared = dict(zip(raters, rates)), dict(zip(raters, compared))
    rows = []
    for a in sorted(set(store.annotator_ids("annotator")) | set(by_annotator)):
        labs = by_annotator.get(a, [])
        secs = [lab.submitted_at - lab.shown_at for lab in labs]
        first, decisive = position_counts(labs)
        rows.append({
            "annotator": a, "labels": len(labs),
            "skipped": counts.get(a, {}).get("skipped", 0),
            "open": counts.get(a, {}).get("open", 0),
            "median_s": statistics.median(secs) if secs else float("nan"),
            "mean_s": statistics.fmean(secs) if secs else float("nan"),
            "first_shown_preferred": first / decisive if decisive else float("nan"),
            "agreement_with_others": with_others.get(a, float("nan")),
            "agreement_units": int(compared.get(a, 0)),
            "rationales": sum(bool(lab.rationale) for lab in labs)})
    per_task = defaultdict(int)
    for lab in labels:
        per_task[lab.task.id] += 1
    out = {"tasks": store.num_tasks(), "labels": len(labels),
           "labels_per_task": store.labels_per_task,
           "tasks_complete": sum(n >= store.labels_per_task for n in per_task.values()),
           "annotators": rows, "preference_units": len(units)}
    out["pairwise_agreement"] = agreement.pairwise_agreement(prefs) if len(units) else float(
        "nan")
    out["krippendorff_alpha"] = (agreement.krippendorff_alpha(prefs, "nominal") if len(units)
                                 else float("nan"))
    counts_table = agreement.counts_from_labels(prefs) if len(units) else np.zeros((0, 0))
    out["fleiss_units"] = int(counts_table.shape[0])
    out["fleiss_kappa"] = (agreement.fleiss_kappa(counts_table)
                           if counts_table.shape[0] and counts_table.sum(1)[0] >= 2
                           else float("nan"))
    ratings, _, rating_units = reliability_matrix(
        labels, lambda lab: {(i,): r for i, r in enumerate(lab.ratings)})
    out["rating_units"] = len(rating_units)
    out["rating_alpha"] = (agreement.krippendorff_alpha(ratings, "interval") if rating_units
                           else float("nan"))
    out["position_bias"] = agreement.position_bias(*position_counts(labels))
    secs = [lab.submitted_at - lab.shown_at for lab in labels]
    out["median_s"] = statistics.median(secs) if secs else float("nan")
    return out
