"""What an offline step reads besides the batch: KTO's mismatched completions and the
reference policy's log-probabilities, cached once per dataset or left to the step."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Optional

import jax
import numpy as np

from rlhf_jax.data import PreferenceBatch, preference_batches
from rlhf_jax.data.buckets import rung_of
from rlhf_jax.data.preference import _to_rows
from rlhf_jax.offline.objective import reference_logprobs


def partner_rows(source, batch, *, num_responses: int, pad_id: int) -> dict:
    """KTO's mismatched completions for a batch read from `source`: each row's prompt with the
    first response of example (index + 1) mod N. Fixed per example, so the reference's
    log-probs of them can be cached. Returns {"tokens", "mask"} [B, P+R'], P the batch's
    prompt length and R' the rung of the longest partner response (a bucketed source) or the
    stored length."""
    n, p = len(source), batch.prompt_len
    others = [source[(i + 1) % n] for i in np.asarray(batch.index).tolist()]
    stored_p = others[0]["prompt"].size
    rows = [_to_rows(o, num_responses, pad_id) for o in others]
    response = {k: np.stack([r[k][0, stored_p:] for r in rows]) for k in ("tokens", "mask")}
    rungs = getattr(source, "rungs", None)
    if rungs is not None:  # bucketed: the rung of the longest partner response
        r = int(rung_of(max(int(response["mask"].sum(1).max()), 1), rungs[1]))
        response = {k: v[:, :r] for k, v in response.items()}
    return {k: np.concatenate([getattr(batch, k)[:, 0, :p], response[k]], axis=1)
            for k in ("tokens", "mask")}


class OfflineInputs:
    """Wraps a per-process `PreferenceBatch` iterator over `source` into the offline step's
    inputs: {"batch"}, plus "partners" for KTO and "reference" (looked up by row index) when a
    reference cache is given. Its position is the wrapped iterator's (exact resume)."""

    def __init__(self, batches: Iterator, source, *, kto: bool, num_responses: int,
                 pad_id: int, cache: Optional[dict] = None):
        self.batches, self.source, self.kto, self.cache = batches, source, kto, cache
        self.num_responses, self.pad_id = num_responses, pad_id

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self.batches)
        out = {"batch": batch}
        if self.kto:
            out["partners"] = partner_rows(self.source, batch, num_responses=self.num_responses,
                                           pad_id=self.pad_id)
        if self.cache is not None:
            out["reference"] = {k: v[batch.index] for k, v in self.cache.items()}
        return out

    def get_state(self):
        """The wrapped iterator's position."""
        return self.batches.get_state()

    def set_state(self, state):
        """Restore the wrapped iterator's position."""
        self.batches.set_state(state)


# one compile per model and batch shape, shared by every split and call
_score = jax.jit(reference_logprobs, static_argnums=0)


def compute_reference_cache(model, ref_params, source, *, batch_size: int, prompt_len: int,
                            num_responses: int, pad_id: int, kto: bool, place) -> dict:
    """The reference policy's log-prob sums of every example of `source` in one jitted pass:
    {"responses": [N, K]} (+ {"partners": [N]} for KTO), float32, indexed like the source.

    Each process reads its share of the rows; `place` makes the global (sharded) inputs from
    them (`train.global_batch_from_local`), and the results are gathered to every process.
    """
    from jax.experimental import multihost_utils

    n = len(source)
    cache = {"responses": np.zeros((n, num_responses), np.float32)}
    if kto:
        cache["partners"] = np.zeros((n,), np.float32)
    local = batch_size // jax.process_count()
    for batch in epoch_batches(source, local, prompt_len=prompt_len,
                               num_responses=num_responses, pad_id=pad_id):
        partners = (partner_rows(source, batch, num_responses=num_responses, pad_id=pad_id)
                    if kto else None)
        out = _score(model, ref_params, place(batch), place(partners) if kto else None)
        index, weight = place(batch.index), place(batch.weight)
        out, index, weight = multihost_utils.process_allgather((out, index, weight), tiled=True)
        keep = np.asarray(weight) > 0
        for k, v in out.items():
            cache[k][np.asarray(index)[keep]] = np.asarray(v)[keep]
    return cache


def epoch_batches(source, local_batch: int, *, prompt_len: int, num_responses: int,
                  pad_id: int):
    """One pass over `source` in order, this process's share, in the same number of batches on
    every process (⌈⌈N/P⌉ / local_batch⌉; shares differ by a row when P does not divide N, and
    a collective in the consumer must not wait on a process that has finished): batches past a
    process's share are weight-0 copies of the first example."""
    n_batches = -(-(-(-len(source) // jax.process_count())) // local_batch)
    it = preference_batches([source], local_batch, prompt_len=prompt_len,
                            num_responses=num_responses, pad_id=pad_id, num_epochs=1,
                            shuffle=False)
    fill = None
    for _ in range(n_batches):
        batch = next(it, None)
        if batch is None:
            if fill is None:
                row = _to_rows(source[0], num_responses, pad_id)
                fill = PreferenceBatch(**{k: np.stack([v] * local_batch) for k, v in row.items()},
                                       prompt_len=prompt_len)
                fill = fill.replace(weight=np.zeros_like(fill.weight))
            batch = fill
        yield batch


def cached_reference(path, key: dict, compute) -> dict:
    """The reference cache stored at `path` (.npz, its `key` inside) when it was made for `key`
    (the built dataset and the reference model), else `compute()`, saved there by the main
    process (atomically). Process 0 decides for all, so every process computes (a collective)
    or none does."""
    path, want = Path(path), json.dumps(key, sort_keys=True)
    found = None
    if jax.process_index() == 0 and path.is_file():
        with np.load(path) as f:
            if "__key__" in f.files and str(f["__key__"]) == want:
                found = {k: f[k] for k in f.files if k != "__key__"}
    reuse = found is not None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        reuse = bool(multihost_utils.broadcast_one_to_all(np.int32(reuse)))
        if reuse and found is None:
            with np.load(path) as f:  # process 0 saw it: the run directory is shared
                found = {k: f[k] for k in f.files if k != "__key__"}
    if reuse:
        return found
    cache = compute()
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez(tmp, __key__=np.array(want), **cache)
        os.replace(tmp, path)
    return cache
