"""Online preference optimisation from AI feedback (Guo et al. 2024, "Direct language model
alignment from online AI feedback"): at every step the current policy answers each prompt K
times, a judge scores the answers, and a pairwise offline loss (DPO and its relatives,
`offline_loss_sums`) is taken on the pairs the scores order, against the initial policy as
reference.

The pieces here are pure: the ranks a judge's scores give (`judged_ranks`), the
`PreferenceBatch` of one step's samples (`online_preference_batch`), what the judge said about
the pairs (`judged_pair_stats`), and the step shell that samples, judges and calls a jitted
update (`make_online_step`).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.data import PreferenceBatch
from rlhf_jax.models import TransformerConfig
from rlhf_jax.sampling import SamplingConfig, generate


def judged_ranks(scores_bk, ended_bk):
    """Ranks [B, K] (0 best) of each prompt's K responses from the judge's scores [B, K].

    A response's rank is the number of responses of its row ranked strictly above it
    (competition ranking), so equal scores share a rank and the pairwise loss skips the pair. A
    response without EOS (`ended_bk` False: cut at max_new_tokens) ranks below every response
    of its row that has one, whatever the scores; such responses are ordered among themselves by
    score. (TRL's `missing_eos_penalty` does the same when the penalty exceeds the scores'
    range.)
    """
    s_i, s_j = scores_bk[:, :, None], scores_bk[:, None, :]
    e_i, e_j = ended_bk[:, :, None], ended_bk[:, None, :]
    above = (e_j & ~e_i) | ((e_j == e_i) & (s_j > s_i))  # [B, i, j]: j ranks above i
    return jnp.sum(above, axis=-1).astype(jnp.int32)


def online_preference_batch(prompt_tokens, prompt_mask, response_tokens, response_mask,
                            scores, ended, *, samples_per_prompt: int) -> PreferenceBatch:
    """The `PreferenceBatch` of one step's samples.

    Rows are prompt-major: prompts [B·K, P] (each prompt repeated K = `samples_per_prompt`
    times, consecutive rows, left-padded), responses [B·K, N] (right-padded after EOS), the
    judge's `scores` [B·K] and `ended` [B·K] (the response ended with EOS). The batch has
    tokens/mask [B, K, P+N], ranks from `judged_ranks`, every row a comparison of K valid
    responses with weight 1, no rating and no annotator.
    """
    k = samples_per_prompt
    rows, p = prompt_tokens.shape
    if rows % k:
        raise ValueError(f"{rows} sampled rows are not a multiple of samples_per_prompt={k}")
    b = rows // k

    def join(prompt, response):  # [B·K, P] and [B·K, N] → [B, K, P+N]
        return jnp.concatenate([prompt, response], axis=1).astype(jnp.int32).reshape(b, k, -1)

    ones = jnp.ones((b,), jnp.int32)
    return PreferenceBatch(
        tokens=join(prompt_tokens, response_tokens), mask=join(prompt_mask, response_mask),
        ranks=judged_ranks(jnp.reshape(scores, (b, k)), jnp.reshape(ended, (b, k)) > 0),
        valid=jnp.ones((b, k), jnp.int32), is_comparison=ones,
        rating=jnp.zeros((b,), jnp.float32), has_rating=0 * ones, annotator=-ones,
        weight=jnp.ones((b,), jnp.float32), index=jnp.arange(b, dtype=jnp.int32),
        prompt_len=p)


def judged_pair_stats(batch: PreferenceBatch, scores) -> dict:
    """What the judge said about the step's pairs (scalars): the mean score of every sample
    ("judge/score_mean", "judge/score_std"), the mean score gap chosen − rejected over the
    pairs the loss uses ("judge/chosen_minus_rejected"; 0 when none), and the share of the
    B·(K−1) best-vs-other pairs that the loss skips because the two tie ("pairs/tie_fraction").
    The pairs are those of the DPO family in `offline_loss_sums`: each row's best response
    against each other one ranked strictly below it."""
    b, k = batch.ranks.shape
    s = jnp.reshape(scores, (b, k)).astype(jnp.float32)
    best = jnp.argmin(batch.ranks, axis=1)[:, None]
    worse = batch.ranks > jnp.take_along_axis(batch.ranks, best, axis=1)
    used = jnp.sum(worse)
    gap = jnp.sum(jnp.where(worse, jnp.take_along_axis(s, best, axis=1) - s, 0.0))
    return {"judge/score_mean": jnp.mean(s), "judge/score_std": jnp.std(s),
            "judge/chosen_minus_rejected": gap / jnp.maximum(used, 1),
            "pairs/tie_fraction": 1.0 - used / (b * (k - 1)),
            "pairs/used": used.astype(jnp.float32)}


def make_online_step(*, config: TransformerConfig, sampling: SamplingConfig,
                     judge: Callable, update: Callable, samples_per_prompt: int,
                     place_batch: Optional[Callable[[Any], Any]] = None,
                     calls_per_sample: float = 1.0) -> Callable:
    """`step_fn(state, prompts) -> (state, metrics)`: one online step for `train.run_training`.

    `prompts` is {"tokens", "mask"} [B, P] (host arrays). The current policy (`state.params`)
    samples `samples_per_prompt` responses per prompt with key fold_in(fold_in(run key, step),
    0), so a resumed run samples what the uninterrupted one did; `judge(prompt_tokens,
    prompt_mask, response_tokens, response_mask) -> [B·K]` scores them (a reward model on the
    device, or a host function: its output is placed like the batch); `update(state, inputs)`
    (jitted) takes {"prompt_tokens", "prompt_mask", "response_tokens", "response_mask",
    "scores", "ended"} and builds the batch (`online_preference_batch`), takes the loss and
    updates. Metrics add the response length and EOS share, the seconds spent generating,
    judging and updating, and the judge calls so far ("judge/calls" = responses scored since
    step 0, times `calls_per_sample`: a pairwise judge comparing every pair of a prompt's K
    answers makes (K − 1)/2 calls per answer).
    """
    put = place_batch or (lambda tree: jax.tree.map(jnp.asarray, tree))
    k = samples_per_prompt

    def step_fn(state, prompts):
        start = time.perf_counter()
        tokens, mask = put(tuple(np.repeat(np.asarray(prompts[name]), k, axis=0)
                                 for name in ("tokens", "mask")))
        key = jax.random.fold_in(jax.random.fold_in(state.key(), state.step), 0)
        sample = generate(state.params, tokens, mask, key, config=config, sampling=sampling)
        jax.block_until_ready(sample.tokens)
        generated = time.perf_counter()
        scores = judge(tokens, mask, sample.tokens, sample.mask)
        if isinstance(scores, np.ndarray):  # a host judge: onto the mesh like the batch
            scores = put(scores.astype(np.float32))
        jax.block_until_ready(scores)
        judged = time.perf_counter()
        calls = (int(state.step) + 1) * tokens.shape[0] * calls_per_sample
        state, metrics = update(state, {
            "prompt_tokens": tokens, "prompt_mask": mask, "response_tokens": sample.tokens,
            "response_mask": sample.mask, "scores": scores, "ended": sample.ended_with_eos})
        jax.block_until_ready(state)
        done = time.perf_counter()
        return state, {**metrics,
                       "response/length": jnp.mean(sample.lengths.astype(jnp.float32)),
                       "response/eos_fraction": jnp.mean(sample.ended_with_eos),
                       "judge/calls": float(calls), "time/generate": generated - start,
                       "time/judge": judged - generated, "time/update": done - judged,
                       "time/iteration": done - start}

    return step_fn
