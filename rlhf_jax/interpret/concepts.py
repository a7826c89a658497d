"""Concepts in a reward model: activations, linear probes, concept activation vectors and TCAV.

Kim et al. 2018, "Interpretability Beyond Feature Attribution: Quantitative Testing with Concept
Activation Vectors (TCAV)":

- a concept C is a set of example texts; a *CAV* v_C^l is the normal of a linear classifier that
  separates the layer-l activations of C's examples from those of random text (§3.2);
- the conceptual sensitivity of the reward at input x is the directional derivative
  S_C,l(x) = ∇h_l r(x) · v_C^l (eq. 1), and the TCAV score the fraction of inputs with
  S > 0 (eq. 2);
- significance (§3.5): the TCAV scores of CAVs trained against R different random sets are
  compared by a two-sided t-test with the scores of random-vs-random CAVs (reported); the
  decision uses a stricter test against random sets in the concept's place (see `tcav`),
  Bonferroni-corrected over the concepts.

Activations are read at the last real token (where the reward head reads) or averaged over the
response tokens; "layer" l counts like transformers' hidden states (0 the embeddings, the last
one after the final norm).
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import models
from rlhf_jax.data import builtin
from rlhf_jax.interpret.text import Inspected, chunks, encode, fits, pad_rows

from rlhf_jax.interpret.options import POOLINGS  # noqa: F401 (re-exported)
# the fewest examples (that fit the model's lengths) a concept or random set needs
LEAST_EXAMPLES = 8


def _layer(config, layer: int) -> int:
    n = config.num_layers + 1
    if not -n <= layer < n:
        raise ValueError(f"layer={layer}: the model has hidden states 0..{n - 1} (negative "
                         "counts from the last)")
    return layer % n


def _pool_weights(mask, response_start: int, pooling: str):
    """[B, T] weights: one-hot at the last real token, or uniform over real response tokens."""
    if pooling == "last":
        return jax.nn.one_hot(models.last_token_index(mask), mask.shape[1])
    if pooling == "mean":
        w = mask * (jnp.arange(mask.shape[1]) >= response_start)
        return w / jnp.maximum(w.sum(-1, keepdims=True), 1)
    raise ValueError(f"pooling={pooling!r}: expected one of {POOLINGS}")


def _perturbations(config, shape):
    return {"transformer": {f"hidden_{i}": jnp.zeros(shape, config.compute_dtype)
                            for i in range(config.num_layers + 1)}}


@partial(jax.jit, static_argnames=("config", "num_outputs", "layer", "pooling",
                                   "response_start"))
def _acts_and_grads(params, tokens, mask, *, config, num_outputs, layer, pooling,
                    response_start):
    """Pooled layer activations [B, D] and the pooled gradient of the reward (ensemble mean)
    with respect to that layer [B, D]: Σ_t w_t ∂r/∂h_t, the derivative of r when every pooled
    position moves along the same direction (for "last" pooling, ∂r/∂h at the last token)."""
    model = models.DecoderModel(config, heads=("reward",), num_reward_outputs=num_outputs)
    pert = _perturbations(config, tokens.shape + (config.hidden_size,))

    def total(p):
        out, inter = model.apply({"params": params, "perturbations": p}, tokens, mask,
                                 mutable=["intermediates"])
        r = out.reward
        return (r if r.ndim == 1 else r.mean(-1)).sum(), inter

    grads, inter = jax.grad(total, has_aux=True)(pert)
    name = f"hidden_{layer}"
    h = inter["intermediates"]["transformer"][name][0].astype(jnp.float32)
    g = grads["transformer"][name].astype(jnp.float32)
    w = _pool_weights(mask, response_start, pooling)
    return jnp.einsum("bt,btd->bd", w, h), jnp.einsum("bt,btd->bd", (w > 0) * 1.0, g)


def activations_and_gradients(rm: Inspected, prompts: Sequence[str], responses: Sequence[str],
                              *, layer: int = -1, pooling: str = "last",
                              batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Pooled activations at `layer` [N, D] and the reward's gradient there [N, D]."""
    enc = encode(rm, prompts, responses)
    acts, grads = [], []
    for s in chunks(len(enc["tokens"]), batch):
        a, g = _acts_and_grads(rm.params, jnp.asarray(pad_rows(enc["tokens"][s], batch)),
                               jnp.asarray(pad_rows(enc["mask"][s], batch)), config=rm.config,
                               num_outputs=rm.num_outputs, layer=_layer(rm.config, layer),
                               pooling=pooling, response_start=enc["response_start"])
        acts.append(np.asarray(a)[:s.stop - s.start])
        grads.append(np.asarray(g)[:s.stop - s.start])
    return np.concatenate(acts), np.concatenate(grads)


@dataclasses.dataclass(frozen=True)
class Probe:
    """A linear probe: the CAV (unit normal pointing towards the concept, in activation space),
    the held-out accuracy, and the examples it was trained on."""

    cav: np.ndarray
    accuracy: float
    train_examples: int


def logistic_regression(x: np.ndarray, y: np.ndarray, c: float = 1.0, iters: int = 100,
                        tol: float = 1e-10) -> tuple[np.ndarray, float]:
    """(w, b) minimising ½‖w‖² + c Σ_i log(1 + exp(−s_i (w·x_i + b))), s_i = ±1 from y ∈ {0, 1}
    (scikit-learn's L2 logistic regression, intercept unpenalised), by Newton's method with
    step halving (the objective is strictly convex). With fewer examples than features the
    problem is solved in the span of the examples, where the optimal w lies (the representer
    theorem): an orthonormal basis Q of that span turns it into an n-feature problem with the
    same penalty (‖Qv‖ = ‖v‖), so a probe costs O(n²d) rather than O(d³) for wide layers."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, d = x.shape
    if d > n:
        q, _ = np.linalg.qr(x.T)  # [d, n]
        v, b = logistic_regression(x @ q, y, c, iters, tol)
        return q @ v, b
    xb = np.concatenate([x, np.ones((n, 1))], 1)
    reg = np.r_[np.ones(d), 0.0]

    def objective(theta):
        z = xb @ theta
        return 0.5 * np.sum(reg * theta ** 2) + c * np.sum(np.logaddexp(0.0, z) - y * z)

    theta = np.zeros(d + 1)
    value = objective(theta)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(xb @ theta)))
        grad = reg * theta + c * xb.T @ (p - y)
        hess = np.diag(reg) + c * (xb.T * (p * (1 - p))) @ xb + 1e-12 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8 and objective(theta - t * step) > value:
            t *= 0.5
        theta -= t * step
        value = objective(theta)
        if np.max(np.abs(t * step)) < tol:
            break
    return theta[:d], float(theta[d])


def train_probe(concept_acts: np.ndarray, other_acts: np.ndarray, *, seed: int = 0,
                holdout: float = 0.25, c: float = 1.0) -> Probe:
    """L2-regularised logistic regression (`logistic_regression`, inverse strength `c`) of
    concept (1) vs other (0) on standardised activations; the CAV is its weight vector mapped
    back to activation space (w / σ, unit length), the normal of the decision boundary (Kim et
    al. 2018, §3.2). Accuracy is measured on a random `holdout` share of each set."""
    x = np.concatenate([concept_acts, other_acts]).astype(np.float64)
    y = np.r_[np.ones(len(concept_acts)), np.zeros(len(other_acts))]
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for label in (0, 1):
        idx = np.flatnonzero(y == label)
        test[rng.choice(idx, max(1, int(round(holdout * len(idx)))), replace=False)] = True
    mu, sigma = x[~test].mean(0), x[~test].std(0) + 1e-8
    w, b = logistic_regression((x[~test] - mu) / sigma, y[~test], c)
    acc = float(np.mean((((x[test] - mu) / sigma) @ w + b > 0) == (y[test] > 0)))
    cav = w / sigma
    return Probe(cav / np.linalg.norm(cav), acc, int((~test).sum()))


def tcav_score(grads: np.ndarray, cav: np.ndarray) -> float:
    """The share of inputs whose directional derivative ∇h r · v_C is positive (Kim et al.
    2018, eq. 2)."""
    return float(np.mean(grads @ cav > 0))


@dataclasses.dataclass(frozen=True)
class ConceptResult:
    """One concept's test. `scores`: TCAV(C_i vs random_i) per run (Kim et al. eq. 2);
    `random_scores`: those of the random-vs-random CAVs; `p_kim`: Kim et al.'s t-test between
    the two; `sensitivity`: the mean directional derivative over inputs and runs; `null`: the
    same statistic for random sets put in the concept's place; `p_value` and `significant`:
    the pseudo-concept test (see `tcav`); `probe_accuracy`: the probes' mean held-out accuracy."""

    name: str
    scores: list
    random_scores: list
    p_kim: float
    sensitivity: float
    null: list
    p_value: float
    significant: bool
    probe_accuracy: float
    examples: int = 0  # the concept's examples that fit the model's lengths uncut

    @property
    def tcav(self) -> float:
        return float(np.mean(self.scores))


def _runs(acts, rand_acts, grads, skip, k, rng, seed):
    """R − 1 runs of one concept: a `k`-example subsample of `acts` against each random set but
    `skip`: (TCAV scores, mean directional derivatives, probe accuracies)."""
    out = []
    for i, other in enumerate(rand_acts):
        if i == skip:
            continue
        probe = train_probe(acts[rng.choice(len(acts), min(k, len(acts)), replace=False)],
                            other, seed=seed + i)
        out.append((tcav_score(grads, probe.cav), float(np.mean(grads @ probe.cav)),
                    probe.accuracy))
    return [list(x) for x in zip(*out)]


def prediction_p_value(value: float, null: Sequence[float]) -> float:
    """Two-sided p-value of `value` as one more draw from the distribution of `null` (the
    t-based prediction interval: t = (x − mean) / (s √(1 + 1/K)), K − 1 degrees of freedom)."""
    from scipy import stats

    null = np.asarray(null, np.float64)
    s = null.std(ddof=1) * np.sqrt(1 + 1 / len(null))
    if s == 0:
        return 1.0 if value == null[0] else 0.0
    return float(2 * stats.t.sf(abs(value - null.mean()) / s, len(null) - 1))


def tcav(rm: Inspected, concepts: dict, randoms: Sequence[tuple], inputs: tuple, *,
         layer: int = -1, pooling: str = "last", alpha: float = 0.05, seed: int = 0,
         subsample: float = 0.5) -> list[ConceptResult]:
    """TCAV with a significance test for each concept (Kim et al. 2018, §3.5).

    `concepts`: {name: (prompts, responses)}; `randoms`: R ≥ 3 random sets (prompts,
    responses); `inputs`: (prompts, responses) whose reward is explained. Examples that do not
    fit the model's lengths uncut are left out (`text.fits`; a cut response loses its EOS and
    would make the concept "truncated text"). Run i trains a CAV on a random subsample of the
    concept (`subsample` × the random sets' size) against random set i, i = 1..R − 1. Kim et al. compare the TCAV scores of the runs with those of random-vs-random CAVs by a
    t-test (`p_kim`, reported). That test treats the runs as independent although they share
    the concept's examples: a random set in the concept's place then often comes out
    significant. The decision here uses a test in which a random concept is exchangeable with
    the null: every random set j in turn plays the concept (against the R − 1 other sets,
    subsampled alike), its mean directional derivative ∇h r · v over inputs and runs is one null draw, and
    the concept's mean is tested as one more draw (`prediction_p_value`), significant when p <
    `alpha` / number of concepts (Bonferroni). With `layer` −1 and "last" pooling (the
    reward head's input), ∇h r is the head's own weight vector for every input, so each TCAV
    score is 0 or 1 and the sensitivity is the CAV's alignment with the head."""
    import warnings

    from scipy import stats

    if len(randoms) < 3:
        raise ValueError(f"{len(randoms)} random sets: expected at least 3")
    kw = dict(layer=layer, pooling=pooling)
    _, grads = activations_and_gradients(rm, *_fitting(rm, *inputs), **kw)
    rand_acts = [activations_and_gradients(rm, *_fitting(rm, *r), **kw)[0] for r in randoms]
    r = len(rand_acts)
    k = max(4, int(round(subsample * min(len(a) for a in rand_acts))))
    rng = np.random.default_rng(seed)

    def sub(a):
        return a[rng.choice(len(a), min(k, len(a)), replace=False)]

    random_scores = [tcav_score(grads, train_probe(sub(rand_acts[i]), rand_acts[(i + 1) % r],
                                                   seed=seed + i).cav) for i in range(r)]
    null = [float(np.mean(_runs(rand_acts[j], rand_acts, grads, j, k, rng, seed)[1]))
            for j in range(r)]
    results = []
    for name, (prompts, responses) in concepts.items():
        prompts, responses = _fitting(rm, prompts, responses)
        if len(prompts) < LEAST_EXAMPLES:
            raise ValueError(f"concept {name!r}: {_fit_note(rm, len(prompts))}")
        acts = activations_and_gradients(rm, prompts, responses, **kw)[0]
        scores, sens, acc = _runs(acts, rand_acts, grads, 0, k, rng, seed)
        if np.ptp(scores) == 0 and np.ptp(random_scores) == 0:
            p_kim = 1.0 if scores[0] == random_scores[0] else 0.0
        else:
            with warnings.catch_warnings():  # near-constant samples: scipy warns, p is right
                warnings.simplefilter("ignore", RuntimeWarning)
                p_kim = float(stats.ttest_ind(scores, random_scores, equal_var=False).pvalue)
        mean = float(np.mean(sens))
        p = prediction_p_value(mean, null)
        results.append(ConceptResult(name, scores, random_scores, p_kim, mean, null, p,
                                     bool(p < alpha / len(concepts)), float(np.mean(acc)),
                                     len(prompts)))
    return results


def _fit_note(rm: Inspected, fit: int, total: Optional[int] = None) -> str:
    of = "" if total is None else f" of {total}"
    return (f"{fit}{of} examples fit the model's lengths ({rm.max_prompt_len} prompt, "
            f"{rm.max_response_len} response tokens with EOS); a concept needs at least "
            f"{LEAST_EXAMPLES}")


def usable_sets(rm: Inspected, sets: dict) -> tuple[dict, dict]:
    """Named (prompts, responses) sets split into those with at least `LEAST_EXAMPLES`
    examples that fit the model's lengths uncut (`text.fits`), and {name: why not} for the
    rest: what `tcav` can use, and what a report should say it left out."""
    kept, left = {}, {}
    for name, (prompts, responses) in sets.items():
        fit = int(fits(rm, prompts, responses).sum()) if len(prompts) else 0
        if fit >= LEAST_EXAMPLES:
            kept[name] = (prompts, responses)
        else:
            left[name] = _fit_note(rm, fit, len(prompts))
    return kept, left


def _fitting(rm: Inspected, prompts, responses) -> tuple[list, list]:
    keep = fits(rm, prompts, responses)
    return ([p for p, k in zip(prompts, keep) if k], [r for r, k in zip(responses, keep) if k])


# -- the built-in task's concepts ------------------------------------------------------------

# words the packaged profanity classifier (alt-profanity-check) flags, for the profanity concept
PROFANE = ["damn", "crap", "stupid", "idiot", "shit", "hell", "sucks", "dumb"]


def _sentences(rng, n: int, words: Sequence[str], length: tuple, must: Sequence[str] = (),
               k: int = 0) -> tuple[list, list]:
    """n (prompt, response) pairs: built-in prompts, responses of `length` words from `words`
    with at least `k` words of `must`."""
    prompts, responses = [], []
    for _ in range(n):
        m = int(rng.integers(length[0], length[1] + 1))
        w = list(rng.choice(list(words), m))
        for j in rng.choice(m, min(k, m), replace=False):
            w[j] = str(rng.choice(list(must)))
        prompts.append(str(rng.choice(builtin.PROMPTS)))
        responses.append(" ".join(w))
    return prompts, responses


def random_texts(n: int, seed: int) -> tuple[list, list]:
    """Random text of the built-in task: any of its words, 4-8 of them."""
    rng = np.random.default_rng(seed)
    return _sentences(rng, n, builtin.NEUTRAL + builtin.PLEASANT + builtin.UNPLEASANT, (4, 8))


def builtin_concepts(n: int = 60, seed: int = 0, max_words: int = 11) -> dict:
    """The built-in task's concepts: "sentiment" (pleasant and neutral words only, at least two
    pleasant), "profanity" (random text with one word of `PROFANE`), "length" (random text of
    9 to `max_words` words, the random sets having 4-8; left out when `max_words` < 9: size it
    so that the words and EOS fit the reward model's response length) and "random" (one more random set, a control that
    should not come out significant)."""
    rng = np.random.default_rng(seed + 7919)
    every = builtin.NEUTRAL + builtin.PLEASANT + builtin.UNPLEASANT
    out = {"sentiment": _sentences(rng, n, builtin.NEUTRAL + builtin.PLEASANT, (4, 8),
                                   builtin.PLEASANT, 2),
           "profanity": _sentences(rng, n, every, (3, 6), PROFANE, 1),
           "length": _sentences(rng, n, every, (9, max_words)),
           "random": random_texts(n, seed + 104729)}
    if max_words < 9:
        del out["length"]
    return out


def read_concept_file(path) -> tuple[list, list]:
    """A user concept: JSONL records with "response" (and optional "prompt") or "text" fields;
    errors name the file, line and field."""
    import json
    from pathlib import Path

    prompts, responses = [], []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
        text = rec.get("response", rec.get("text")) if isinstance(rec, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}:{i}: expected a non-empty string field 'response' or "
                             "'text'")
        prompt = rec.get("prompt", "")
        if not isinstance(prompt, str):
            raise ValueError(f"{path}:{i}: field 'prompt' must be a string")
        prompts.append(prompt)
        responses.append(text)
    if len(responses) < 8:
        raise ValueError(f"{path}: {len(responses)} examples; a concept needs at least 8")
    return prompts, responses
