"""Annotator screening on the labelling app's own labels: each annotator's pairwise labels are
read against a reward model's (or a judge's) margins (`reward.annotator_screening`), those it
finds inverted are quarantined in the store (`LabelStore.set_quarantine`, which logs who, when
and why), and every decision with its evidence goes into the hash-chained decision log; an
export can then leave them out (`export_all(..., leave_out_annotators=store.quarantined())`).
"""
from __future__ import annotations

import json
from typing import Callable, Optional, Sequence

import numpy as np

from rlhf_jax import reward
from rlhf_jax.interpret.decisions import DecisionLog


def app_comparisons(labels: Sequence) -> tuple[list[tuple], np.ndarray, list[str], list[int]]:
    """The two-response labels that prefer one response: (pairs (prompt, first shown, second
    shown), first_chosen [N], annotators, label ids)."""
    pairs, first, who, ids = [], [], [], []
    for lab in labels:
        if len(lab.task.responses) != 2 or lab.ranks[0] == lab.ranks[1]:
            continue
        a, b = lab.shown_order
        pairs.append((lab.task.prompt, lab.task.responses[a], lab.task.responses[b]))
        first.append(lab.ranks[a] < lab.ranks[b])
        who.append(lab.annotator_id)
        ids.append(lab.id)
    return pairs, np.asarray(first, bool), who, ids


def screen_app_annotators(store, margin_fn: Callable[[Sequence[tuple]], np.ndarray], *,
                          by: str = "annotator_screening", log: Optional[DecisionLog] = None,
                          alpha: float = 0.01, min_labels: int = 10) -> dict:
    """Screen every annotator of `store` by their pairwise labels against `margin_fn(pairs) ->
    [N]` (r(first) − r(second)); quarantine those screened "quarantine" (reason: the evidence,
    as JSON) as `by` — accounts with fewer than `min_labels` labels are screened, and
    quarantined, together (`reward.POOLED`; the evidence names them); write each decision to
    `log` when given ("down-weight" is logged as "flag": the store applies no weights).
    Returns the screening (`reward.annotator_screening`) with "quarantined": the annotators
    quarantined now."""
    pairs, first, who, _ = app_comparisons(store.labels())
    if not pairs:
        raise ValueError("the store holds no two-response label that prefers one response: "
                         "nothing to screen")
    screen = reward.annotator_screening(np.asarray(margin_fn(pairs), np.float64), first, who,
                                        alpha=alpha, min_labels=min_labels)
    newly = []
    for group, e in screen["annotators"].items():
        for a in e["members"] if e["action"] == "quarantine" else ():
            reason = json.dumps({"screen": by, "group": group,
                                 **{k: round(v, 4) if isinstance(v, float) else v
                                    for k, v in e.items()}})
            if store.set_quarantine(a, True, reason=reason, by=by):
                newly.append(a)
    if log is not None:  # the store keeps no weights: a down-weight is a flag for review here
        log.record_screenings(by, [
            {"target": f"annotator:{g}",
             "action": "flag" if e["action"] == "down-weight" else e["action"],
             "evidence": e}
            for g, e in screen["annotators"].items()])
    return {**screen, "quarantined": newly}
