"""Text in, text out: batched sampling of continuations from a Hugging Face policy directory."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import numpy as np

from rlhf_jax import data, models
from rlhf_jax.sampling.decode import SamplingConfig, generate


class TextSampler:
    """Batched sampling of continuations of texts or conversations (message lists, rendered
    with the chat template's generation prompt) from a policy directory, through `generate`
    (left-padded, prompts cut from the left to `max_len` tokens as `data.chat` cuts them,
    every batch padded to `batch_size` rows so one compiled program serves every call). The
    chat template's end of turn and the tokenizer's EOS end a continuation, besides
    `sampling.eos_token_ids`."""

    def __init__(self, policy_dir: str, *, max_len: int = 128,
                 sampling: Optional[SamplingConfig] = None, batch_size: int = 32,
                 _loaded: Optional[tuple] = None):
        self.policy_dir = str(policy_dir)
        if _loaded is None:
            self.config, self.params = models.load_hf_checkpoint(policy_dir)
            self.tok = models.load_tokenizer(policy_dir, self.config)
        else:
            self.config, self.params, self.tok = _loaded
        self.max_len, self.batch_size = max_len, batch_size
        sampling = sampling or SamplingConfig(max_new_tokens=24)
        eos = data.encoder_for(self.tok).stop_ids + sampling.eos_token_ids
        self.sampling = dataclasses.replace(sampling, eos_token_ids=tuple(dict.fromkeys(eos)),
                                            pad_token_id=self.tok.pad_token_id or 0)

    @classmethod
    def from_params(cls, config, params, tokenizer, **kw) -> "TextSampler":
        """A sampler of a policy held in memory (e.g. a rewarded soup), not read from disk."""
        return cls("<in memory>", _loaded=(config, params, tokenizer), **kw)

    def __call__(self, texts: Sequence, key) -> list[str]:
        """One sampled continuation of each text (decoded, stripped), batch s with key
        fold_in(key, s)."""
        return self.sample(texts, key)[0]

    def sample(self, texts: Sequence, key) -> tuple[list[str], list[bool]]:
        """(`__call__`'s continuations, whether each ended with an end token rather than at
        `sampling.max_new_tokens`)."""
        counts = {"prompts_truncated": 0}
        out, ended = [], []
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
            toks, mask, eos = jax.device_get((res.tokens, res.mask, res.ended_with_eos))
            out += [self.tok.decode(toks[i][mask[i] > 0], skip_special_tokens=True).strip()
                    for i in range(n)]
            ended += [bool(x) for x in eos[:n]]
        return out, ended
