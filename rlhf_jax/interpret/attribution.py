"""Token attributions for a reward model's score or a policy's log-probability of a response.

A *target* maps (params, token embeddings [B, T, D], tokens, mask) to one number per row [B]:
`RewardTarget` (the reward, ensemble mean) or `LogProbTarget` (Σ_t log π(y_t | y_<t, x) over the
response). Each method returns one attribution per token [B, T] (0 on pads):

- `gradient_x_input`: Σ_d x_td · ∂f/∂x_td (Shrikumar et al. 2016; Denil et al. 2014).
- `integrated_gradients`: Σ_d (x − x')_td · ∫₀¹ ∂f(x' + α(x − x'))/∂x_td dα (Sundararajan et al.
  2017, eq. 1), the integral by a quadrature over `steps` intervals. Completeness (their
  Proposition 1): the attributions sum to f(x) − f(x'), up to the quadrature error;
  `integrated_gradients_to_tolerance` doubles the steps until that error is small enough.
- `occlusion`: f(x) − f(x with token t left out), the token removed from the attention mask so
  that the later tokens' positions close up, or replaced by another token (Zeiler & Fergus
  2014; Li et al. 2016, "Understanding Neural Networks through Representation Erasure").

All three run the model on embeddings (`DecoderModel(..., inputs_embeds=)`), batched and jitted;
the targets are frozen dataclasses, so each (target, shape) compiles once.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rlhf_jax.models import DecoderModel, TransformerConfig, predicted_logprobs

RULES = ("trapezoid", "riemann_right", "midpoint")


@dataclasses.dataclass(frozen=True)
class RewardTarget:
    """The reward model's score of each row (mean over an ensemble's `num_outputs` heads)."""

    config: TransformerConfig
    num_outputs: int = 1

    def model(self) -> DecoderModel:
        return DecoderModel(self.config, heads=("reward",), num_reward_outputs=self.num_outputs)

    def __call__(self, params, embeds, tokens, mask):
        r = self.model().apply({"params": params}, None, mask, inputs_embeds=embeds).reward
        return r if r.ndim == 1 else r.mean(-1)


@dataclasses.dataclass(frozen=True)
class LogProbTarget:
    """Σ over response positions (t ≥ `response_start`, mask > 0) of log π(y_t | y_<t) at
    `temperature`: the policy's log-probability of the response given the prompt."""

    config: TransformerConfig
    response_start: int
    temperature: float = 1.0

    def model(self) -> DecoderModel:
        return DecoderModel(self.config)

    def __call__(self, params, embeds, tokens, mask):
        s = self.response_start
        out = self.model().apply({"params": params}, None, mask, inputs_embeds=embeds,
                                 skip_logits=self.config.logit_chunk > 0)
        logp, _ = predicted_logprobs(out, params, self.config, tokens[:, s:], s, self.temperature)
        return jnp.sum(jnp.where(mask[:, s:] > 0, logp, 0.0), axis=-1)


Target = Union[RewardTarget, LogProbTarget]


@struct.dataclass
class Attribution:
    """Per-token attributions [B, T] with f(x) [B]; for integrated gradients also f(x') and the
    completeness gap f(x) − f(x') − Σ_t attributions [B]."""

    scores: jax.Array
    value: jax.Array
    baseline_value: Optional[jax.Array] = None
    completeness_gap: Optional[jax.Array] = None


def embed(target: Target, params, tokens):
    """The model's token embeddings [B, T, D] of `tokens` (what attributions are taken over)."""
    return target.model().apply({"params": params}, tokens, method="embed")


def _baseline(target: Target, params, tokens, mask, embeds, baseline_embeds, baseline_token):
    """x' at real tokens: `baseline_embeds` (broadcastable to [B, T, D]) when given, else the
    embedding of `baseline_token` (e.g. the pad token) when given, else zeros; pads keep their
    embedding (they are masked out anyway)."""
    if baseline_embeds is not None:
        base = jnp.broadcast_to(jnp.asarray(baseline_embeds, embeds.dtype), embeds.shape)
    elif baseline_token is not None:
        base = jnp.broadcast_to(embed(target, params, jnp.full_like(tokens[:, :1],
                                                                     baseline_token)),
                                embeds.shape).astype(embeds.dtype)
    else:
        base = jnp.zeros_like(embeds)
    return jnp.where(mask[..., None] > 0, base, embeds)


@partial(jax.jit, static_argnames=("target",))
def gradient_x_input(params, tokens, mask, *, target: Target) -> Attribution:
    """Gradient × input: Σ_d x_td ∂f/∂x_td per token (Shrikumar et al. 2016)."""
    x = embed(target, params, tokens)
    value, grad = jax.value_and_grad(lambda e: target(params, e, tokens, mask).sum())(x)
    del value
    scores = jnp.sum(grad.astype(jnp.float32) * x.astype(jnp.float32), -1)
    return Attribution(jnp.where(mask > 0, scores, 0.0), target(params, x, tokens, mask))


def quadrature(steps: int, rule: str = "trapezoid"):
    """Nodes α_k in [0, 1] and weights w_k with Σ_k w_k g(α_k) ≈ ∫₀¹ g(α) dα over `steps`
    intervals: the trapezoid rule (error O(1/steps²)), the right Riemann sum of Sundararajan et al.
    2017, eq. 3 (O(1/steps)), or the midpoint rule (O(1/steps²))."""
    if steps < 1:
        raise ValueError(f"steps={steps}: expected >= 1")
    k = jnp.arange(steps + 1, dtype=jnp.float32)
    if rule == "trapezoid":
        w = jnp.full(steps + 1, 1.0 / steps).at[0].set(0.5 / steps).at[-1].set(0.5 / steps)
        return k / steps, w
    if rule == "riemann_right":
        return k[1:] / steps, jnp.full(steps, 1.0 / steps)
    if rule == "midpoint":
        return (k[:-1] + 0.5) / steps, jnp.full(steps, 1.0 / steps)
    raise ValueError(f"rule={rule!r}: expected one of {RULES}")


@partial(jax.jit, static_argnames=("target", "steps", "rule", "baseline_token"))
def integrated_gradients(params, tokens, mask, baseline_embeds=None, *, target: Target,
                         steps: int = 64, rule: str = "midpoint",
                         baseline_token: Optional[int] = None) -> Attribution:
    """Integrated gradients over the token embeddings (Sundararajan et al. 2017, eq. 1):
    (x − x') ⊙ Σ_k w_k ∇f(x' + α_k (x − x')), summed over the embedding dimension, with the
    quadrature `rule` over `steps` intervals. The baseline x' is `baseline_embeds`, else the
    embedding of `baseline_token`, else zeros (see `_baseline`). One batched gradient per
    quadrature node (a `lax.scan`, so memory stays that of one step)."""
    x = embed(target, params, tokens).astype(jnp.float32)
    x0 = _baseline(target, params, tokens, mask, x, baseline_embeds, baseline_token)
    alphas, weights = quadrature(steps, rule)
    grad_f = jax.grad(lambda e: target(params, e, tokens, mask).sum())

    def body(total, aw):
        a, w = aw
        return total + w * grad_f(x0 + a * (x - x0)).astype(jnp.float32), None

    avg_grad, _ = jax.lax.scan(body, jnp.zeros_like(x), (alphas, weights))
    scores = jnp.where(mask > 0, jnp.sum((x - x0) * avg_grad, -1), 0.0)
    value, base_value = target(params, x, tokens, mask), target(params, x0, tokens, mask)
    return Attribution(scores, value, base_value, value - base_value - scores.sum(-1))


def token_or_mean_baseline(target: Target, params, token: int, *, min_ratio: float = 0.1,
                           chunk: int = 8192) -> tuple[Optional[np.ndarray], str]:
    """A baseline for integrated gradients over a model's token embeddings: (None, "pad
    token") — use `baseline_token=token` — when that token's embedding has at least
    `min_ratio` of the median norm of the vocabulary's embeddings; else (the vocabulary's mean
    embedding rescaled to that median norm [D], "mean embedding"). Hugging Face initialises a
    padding row to zero, and a zero baseline in a pre-norm (RMSNorm) model puts a near-step
    at the start of the path (RMSNorm(αx) jumps from 0 to x/rms(x) within α ~ √ε / rms(x)),
    which no step count integrates: completeness gaps of 15-300% at 1024 steps. The mean
    direction at a typical norm keeps the path away from 0."""
    vocab = target.config.vocab_size
    total, norms = 0.0, []
    for start in range(0, vocab, chunk):
        ids = jnp.arange(start, min(start + chunk, vocab))[None]
        e = np.asarray(embed(target, params, ids)[0], np.float64)
        total = total + e.sum(0)
        norms.append(np.linalg.norm(e, axis=1))
    norms = np.concatenate(norms)
    median = float(np.median(norms))
    if norms[token] >= min_ratio * median:
        return None, "pad token"
    mean = total / vocab
    return (mean / max(np.linalg.norm(mean), 1e-30) * median).astype(np.float32), \
        "mean embedding"


def relative_gap(attribution: Attribution) -> np.ndarray:
    """|completeness gap| / |f(x) − f(x')| per row [B] (∞ where f(x) = f(x') but the gap is
    not 0): how far integrated gradients' attributions are from summing to the change they
    explain (Sundararajan et al. 2017, Proposition 1)."""
    gap = np.abs(np.asarray(attribution.completeness_gap, np.float64))
    delta = np.abs(np.asarray(attribution.value - attribution.baseline_value, np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap == 0, 0.0, gap / delta)


def integrated_gradients_to_tolerance(params, tokens, mask, baseline_embeds=None, *,
                                      target: Target, tolerance: float = 0.01, steps: int = 64,
                                      max_steps: int = 1024, rule: str = "midpoint",
                                      baseline_token: Optional[int] = None
                                      ) -> tuple[Attribution, np.ndarray]:
    """`integrated_gradients` with the step count doubled, from `steps` up to `max_steps`,
    until every row's `relative_gap` is at most `tolerance` (the midpoint and trapezoid rules'
    error falls about 4× per doubling for a smooth path). Each row keeps the result of the
    first step count that met the tolerance, or of the last one tried. Returns (the
    attributions, each row's step count [B]); rows still above the tolerance at `max_steps`
    show it in `relative_gap` (e.g. a float32 floor when f(x) − f(x') is tiny)."""
    if steps < 1 or max_steps < steps:
        raise ValueError(f"steps={steps}, max_steps={max_steps}: expected 1 <= steps <= "
                         "max_steps")
    kw = dict(target=target, rule=rule, baseline_token=baseline_token)
    best = integrated_gradients(params, tokens, mask, baseline_embeds, steps=steps, **kw)
    used = np.full(tokens.shape[0], steps)
    done = relative_gap(best) <= tolerance
    n = steps
    while not done.all() and n * 2 <= max_steps:
        n *= 2
        more = integrated_gradients(params, tokens, mask, baseline_embeds, steps=n, **kw)
        take = jnp.asarray(~done)
        best = jax.tree.map(lambda old, new: jnp.where(
            take.reshape((-1,) + (1,) * (new.ndim - 1)), new, old), best, more)
        used = np.where(done, used, n)
        done = relative_gap(best) <= tolerance
    return best, used


@partial(jax.jit, static_argnames=("target", "replace_token"))
def occlusion(params, tokens, mask, *, target: Target,
              replace_token: Optional[int] = None) -> Attribution:
    """Leave-one-token-out: f(x) − f(x without token t). By default the token is dropped from
    the attention mask (the positions after it close up); with `replace_token` its embedding is
    replaced by that token's instead (required for `LogProbTarget`: a dropped position would have
    to predict the next response token). One batched forward pass per position."""
    if replace_token is None and isinstance(target, LogProbTarget):
        raise ValueError("occlusion of a LogProbTarget needs replace_token (e.g. the pad token): "
                         "a removed position cannot predict the token after it")
    x = embed(target, params, tokens)
    value = target(params, x, tokens, mask)
    t = tokens.shape[1]
    if replace_token is not None:
        sub = embed(target, params, jnp.full_like(tokens[:, :1], replace_token))

    def without(i):
        if replace_token is None:
            return value - target(params, x, tokens,
                                  mask * (jnp.arange(t) != i).astype(mask.dtype))
        return value - target(params, x.at[:, i].set(sub[:, 0]), tokens, mask)

    scores = jax.lax.map(without, jnp.arange(t)).T  # [B, T]
    return Attribution(jnp.where(mask > 0, scores, 0.0), value)


METHODS = {"gradient_x_input": gradient_x_input, "integrated_gradients": integrated_gradients,
           "occlusion": occlusion}


def attribute(method: str, params, tokens, mask, *, target: Target, **kw) -> Attribution:
    """Attributions by `method` (a key of `METHODS`), with its keyword arguments."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {sorted(METHODS)}")
    return METHODS[method](params, tokens, mask, target=target, **kw)
