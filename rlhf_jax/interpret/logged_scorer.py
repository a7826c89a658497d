"""A reward-model scorer that appends one decision per row it scores to a decision log
(`rlhf_jax.interpret.decisions`), keyed by the model's and the input's hashes."""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import jax
import numpy as np

from rlhf_jax.interpret import decisions
from rlhf_jax.reward.scoring import reward_model_scorer


@partial(jax.jit, static_argnums=0)
def _scores_and_spread(score_fn, params, prompt_tokens, prompt_mask, response_tokens,
                       response_mask):
    """(scores [B], ensemble std [B] or None) in one forward pass."""
    seq = (prompt_tokens, prompt_mask, response_tokens, response_mask)
    if isinstance(score_fn, reward_model_scorer) and score_fn.num_outputs > 1:
        return score_fn.score_and_spread(params, *seq)
    return score_fn(params, *seq), None


class LoggedScorer:
    """`score_fn` (signature of `reward_model_scorer`) that appends one decision per row to
    `log`: the model hash (computed once per params object, or given), the `input_hash` of the
    prompt + response real tokens, the score and, for an ensemble `reward_model_scorer`, its
    std over members as the uncertainty (None for one head or another score_fn).

    Host-side: it runs the jitted score, fetches it and writes the log, so it cannot be used
    inside `jax.jit`. Call it on one process (or give each process its own log), with
    parameters that process can read whole: hashing parameters sharded over several processes
    needs `model_hash` on every process, so pass its result as `model_hash` then. A given
    `model_hash` labels the first params object scored; other params get their own hash. The
    last params object is kept referenced to recognise it on the next call.
    """

    def __init__(self, score_fn: Callable, log, *, context: str = "",
                 model_hash: Optional[str] = None):
        self.score_fn, self.context = score_fn, context
        self.log = log if isinstance(log, decisions.DecisionLog) else decisions.DecisionLog(log)
        self._given = model_hash
        self._hashed = None

    def model_hash(self, params) -> str:
        """The hash logged for `params` (cached for the same params object)."""
        if self._hashed is None and self._given:  # the given hash names the first params
            self._hashed = (params, self._given)
        elif self._hashed is None or self._hashed[0] is not params:
            self._hashed = (params, decisions.model_hash(params))
        return self._hashed[1]

    def __call__(self, params, prompt_tokens, prompt_mask, response_tokens, response_mask, *,
                 context: Optional[str] = None):
        scores, spread = _scores_and_spread(self.score_fn, params, prompt_tokens, prompt_mask,
                                            response_tokens, response_mask)
        pt, pm, rt, rm, s, u = jax.device_get((prompt_tokens, prompt_mask, response_tokens,
                                               response_mask, scores, spread))
        hashes = [decisions.input_hash(np.concatenate([a, b]), np.concatenate([c, d]))
                  for a, b, c, d in zip(pt, rt, pm, rm)]
        self.log.append_decisions(
            model_hash=self.model_hash(params), input_hashes=hashes,
            scores=np.asarray(s, np.float64).tolist(),
            uncertainties=None if u is None else np.asarray(u, np.float64).tolist(),
            context=self.context if context is None else context)
        return scores
