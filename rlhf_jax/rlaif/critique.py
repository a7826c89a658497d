"""Critique–revision (SL-CAI; Bai et al. 2022, §3.1): the policy answers, then critiques its
answer against a principle's critique request and revises it against the revision request, for
n rounds; the final revisions become supervised fine-tuning data."""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np

from rlhf_jax import data, models
from rlhf_jax.rlaif.constitution import Constitution
from rlhf_jax.sampling import SamplingConfig, generate

CRITIQUE = "{context}\n\nCritique request: {request}\nCritique:"
REVISION = "{context} {critique}\n\nRevision request: {request}\nRevision:"


class Sampler:
    """Batched sampling of continuations of texts from a policy directory, through our sampler
    (left-padded, prompts cut from the left to `max_len` tokens, one compiled shape)."""

    def __init__(self, policy_dir: str, *, max_len: int = 128, max_new_tokens: int = 24,
                 temperature: float = 1.0, batch_size: int = 32):
        self.config, self.params = models.load_hf_checkpoint(policy_dir)
        self.tok = models.load_tokenizer(policy_dir, self.config)
        self.max_len, self.batch_size = max_len, batch_size
        eos = () if self.tok.eos_token_id is None else (self.tok.eos_token_id,)
        self.sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                       eos_token_ids=eos, pad_token_id=self.tok.pad_token_id or 0)

    def __call__(self, texts: Sequence[str], key) -> list[str]:
        counts = {"prompts_truncated": 0}
        out = []
        for s in range(0, len(texts), self.batch_size):
            part = list(texts[s:s + self.batch_size])
            n = len(part)
            part += [part[0]] * (self.batch_size - n)
            enc = np.stack([data.preference.encode_prompt(self.tok, t, self.max_len, counts)
                            for t in part])
            batch = data.prompt_arrays(enc, self.tok.pad_token_id or 0)
            res = generate(self.params, batch["tokens"], batch["mask"],
                           jax.random.fold_in(key, s), config=self.config,
                           sampling=self.sampling)
            toks, mask = jax.device_get((res.tokens, res.mask))
            out += [self.tok.decode(toks[i][mask[i] > 0], skip_special_tokens=True).strip()
                    for i in range(n)]
        return out


def critique_revision(sampler: Sampler, constitution: Constitution, prompts: Sequence[str], *,
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
        ctx = [f"{p} {r}" for p, r in zip(prompts, current)]
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
