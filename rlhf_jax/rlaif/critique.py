"""Critique–revision (SL-CAI; Bai et al. 2022, §3.1): the policy answers, then critiques its
answer against a principle's critique request and revises it against the revision request, for
n rounds; the final revisions become supervised fine-tuning data."""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np

from rlhf_jax.data import prompt_text
from rlhf_jax.rlaif.constitution import Constitution
from rlhf_jax.sampling.text import TextSampler

CRITIQUE = "{context}\n\nCritique request: {request}\nCritique:"
REVISION = "{context} {critique}\n\nRevision request: {request}\nRevision:"


def critique_revision(sampler: TextSampler, constitution: Constitution, prompts: Sequence[str], *,
                      rounds: int = 1, seed: int = 0,
                      rng: Optional[np.random.Generator] = None) -> list[dict]:
    """For each prompt: an initial response, then `rounds` of (principle drawn by weight among
    those with critique and revision requests → critique → revision). Returns one record per
    prompt: {"prompt", "initial", "rounds": [{"principle", "critique", "revision"}], "final"}."""
    usable = [p for p in constitution.principles if p.critique and p.revision]
    if not usable:
        raise ValueError("no principle of the constitution has critique and revision requests")
    if rounds < 1:
        raise ValueError(f"rounds={rounds}: expected >= 1")
    rng = rng or np.random.default_rng(seed)
    w = np.array([p.weight for p in usable])
    key = jax.random.key(seed)
    current = sampler(list(prompts), jax.random.fold_in(key, 0))
    records = [{"prompt": p, "initial": r, "rounds": []} for p, r in zip(prompts, current)]
    for k in range(rounds):
        picks = [usable[i] for i in rng.choice(len(usable), size=len(prompts), p=w / w.sum())]
        # a conversation is critiqued as its plain transcript (`data.prompt_text`)
        ctx = [f"{prompt_text(p)} {r}" for p, r in zip(prompts, current)]
        crit_in = [CRITIQUE.format(context=c, request=pr.critique) for c, pr in zip(ctx, picks)]
        critiques = sampler(crit_in, jax.random.fold_in(key, 2 * k + 1))
        rev_in = [REVISION.format(context=ci, critique=cr, request=pr.revision)
                  for ci, cr, pr in zip(crit_in, critiques, picks)]
        revisions = sampler(rev_in, jax.random.fold_in(key, 2 * k + 2))
        for rec, pr, cr, rv in zip(records, picks, critiques, revisions):
            rec["rounds"].append({"principle": pr.id, "critique": cr, "revision": rv})
        current = [rv if rv.strip() else cur for rv, cur in zip(revisions, current)]
    for rec, final in zip(records, current):
        rec["final"] = final
    return records
