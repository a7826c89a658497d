"""Texts in the reward model's layout, and a reward model loaded for inspection.

Reward models score prompt + response as the preference data stores them (docs/design.md): the prompt
left-padded to `max_prompt_len`, the response right-padded to `max_response_len` with EOS
appended. Everything in `interpret` reads texts through `encode` so that a score here is the
score the model gave in training.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import data, models, reward


@dataclasses.dataclass(frozen=True)
class Inspected:
    """A reward model with its tokenizer and the lengths its inputs are encoded to."""

    config: models.TransformerConfig
    params: dict
    num_outputs: int
    tokenizer: object
    max_prompt_len: int
    max_response_len: int

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)


def load(reward_dir, *, max_prompt_len: int, max_response_len: int) -> Inspected:
    """A reward-model directory (`reward.save_reward_model`) ready to inspect."""
    config, params, meta = reward.load_reward_model(reward_dir)
    tok = models.load_tokenizer(reward_dir, config)
    return Inspected(config, params, int(meta["num_outputs"]), tok, max_prompt_len,
                     max_response_len)


def as_response(prompt, response):
    """A response in the form its prompt needs: text after a text prompt (a message list's
    assistant turns joined), one assistant turn after a conversation (text wrapped)."""
    if isinstance(prompt, str):
        return data.response_text(response)
    return [{"role": "assistant", "content": response}] if isinstance(response, str) else response


def encode(rm: Inspected, prompts: Sequence, responses: Sequence) -> dict:
    """{"tokens", "mask"} [N, P+R] in the preference-data layout (responses end with EOS, or a
    conversation's end of turn, and are truncated to `max_response_len`; prompts are text or
    conversations, responses as `as_response` puts them); `response_start` = P; `truncated`
    [N] marks rows whose prompt or response did not fit (a cut response also loses its EOS,
    which the reward model never saw in training); `response_tokens` [N] counts each
    response's tokens as kept."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    counts = {"prompts_truncated": 0, "responses_truncated": 0}
    eos = rm.tokenizer.eos_token_id
    rows, cut = [], []
    for p, r in zip(prompts, responses):
        before = counts["prompts_truncated"] + counts["responses_truncated"]
        prompt, resp = data.preference.tokenize_record(
            {"prompt": p, "responses": [as_response(p, r)]}, rm.tokenizer, rm.max_prompt_len,
            rm.max_response_len, eos, counts)
        rows.append(np.concatenate([prompt, resp[0]]))
        cut.append(counts["prompts_truncated"] + counts["responses_truncated"] > before)
    seq = np.stack(rows) if rows else np.zeros((0, rm.max_prompt_len + rm.max_response_len),
                                               np.int32)
    pad = data.preference.PAD
    return {"tokens": np.where(seq == pad, rm.pad_id, seq).astype(np.int32),
            "mask": (seq != pad).astype(np.int32), "response_start": rm.max_prompt_len,
            "truncated": np.array(cut, bool),
            "response_tokens": (seq[:, rm.max_prompt_len:] != pad).sum(1)}


def fits(rm: Inspected, prompts: Sequence, responses: Sequence) -> np.ndarray:
    """[N] whether each prompt + response fits the model's lengths uncut (EOS included)."""
    return ~encode(rm, prompts, responses)["truncated"]


@partial(jax.jit, static_argnames=("scorer", "start"))
def _rewards(params, tokens, mask, *, scorer, start):
    return scorer.members(params, tokens[:, :start], mask[:, :start], tokens[:, start:],
                          mask[:, start:])


def chunks(n: int, size: int):
    """Slices covering range(n) in pieces of `size` (the last one padded by the caller)."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    """`x` with its first axis padded to `size` by repeating its last row (one compiled shape)."""
    return x if len(x) == size else np.concatenate([x, np.repeat(x[-1:], size - len(x), 0)])


def member_rewards(rm: Inspected, enc: dict, batch: int = 64) -> np.ndarray:
    """Every ensemble member's reward of each encoded row [N, M] (M = 1 for one head)."""
    n, out = len(enc["tokens"]), []
    for s in chunks(n, batch):
        t, m = pad_rows(enc["tokens"][s], batch), pad_rows(enc["mask"][s], batch)
        r = _rewards(rm.params, jnp.asarray(t), jnp.asarray(m),
                     scorer=reward.reward_model_scorer(rm.config, rm.num_outputs),
                     start=enc["response_start"])
        out.append(np.asarray(r)[:s.stop - s.start])
    return np.concatenate(out) if out else np.zeros((0, rm.num_outputs), np.float32)

