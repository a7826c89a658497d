"""How to sample (a config dataclass, importable without JAX)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample: length, temperature, top-k (0: off), top-p (1: off), greedy, EOS and pad."""

    max_new_tokens: int  # response tokens sampled at most
    temperature: float = 1.0  # logits are divided by it (log-probs are taken at it)
    top_k: int = 0  # keep the k most likely tokens (0: off)
    top_p: float = 1.0  # nucleus: smallest set with this much probability (1: off)
    greedy: bool = False  # argmax instead of sampling
    eos_token_ids: tuple[int, ...] = ()  # extra ids that end a response
    pad_token_id: int = 0  # id after the end of a response

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens <= 0:
            raise ValueError(f"SamplingConfig.max_new_tokens={self.max_new_tokens!r}: expected a "
                             "positive int")
        if not self.temperature > 0:
            raise ValueError(f"SamplingConfig.temperature={self.temperature}: expected > 0 (use "
                             "greedy=True for argmax decoding)")
        if self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k={self.top_k}: expected >= 0 (0 disables)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p={self.top_p}: expected 0 < top_p <= 1")
        if isinstance(self.eos_token_ids, int):
            object.__setattr__(self, "eos_token_ids", (self.eos_token_ids,))
        object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in self.eos_token_ids))
