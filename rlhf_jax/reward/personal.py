"""Rewards personalised to each user: r_u(x, y) = w_u · φ(x, y), a basis of K' reward heads
φ on one shared backbone and a weight vector w_u per user (reward factorisation: Bose et al.
2025, "LoRe: low-rank reward modeling"; Shenfeld et al. 2025, "PReF: personalized reward
fine-tuning").

Training (`make_personal_reward_loss`): many users' comparisons (`batch.annotator` is the user)
learn the basis and every user's weights jointly, by the Bradley–Terry likelihood
P_u(y₁ ≻ y₂) = σ(w_u · (φ(x, y₁) − φ(x, y₂))) (Ouyang et al. 2022, eq. 1, with the user's
reward) and a Gaussian prior on each w_u.

A new user (`laplace_posterior`): the basis frozen, w_u starts at the population prior
N(μ₀, Σ₀) (`population_prior`: the trained users' weights), and their comparisons, as feature
differences dᵢ = φ(chosen) − φ(rejected), give a Bayesian logistic regression

    log p(w | D) = Σᵢ log σ(w · dᵢ) − ½ (w − μ₀)ᵀ Σ₀⁻¹ (w − μ₀) + const,

whose mode ŵ Newton's method finds and whose Laplace approximation is N(ŵ, H⁻¹) with
H = Σᵢ pᵢ(1 − pᵢ) dᵢdᵢᵀ + Σ₀⁻¹, pᵢ = σ(ŵ · dᵢ) (Bishop 2006, §4.5.1, eqs. 4.142–4.143).
Each new comparison refits from the last mode (an online update). The next comparison to ask
for is the one whose label is expected to shrink the posterior most (`expected_information`).
"""
from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax.reward.objective import batch_rewards

# Newton steps of `laplace_posterior`: each takes the longest of the full step and shorter ones
# that does not raise the objective (a backtracking line search; the last try, 0, always
# qualifies); the posterior is log-concave, so the full step is soon taken and converges
# quadratically.
NEWTON_STEPS = 25
_STEP_SIZES = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.0)


def init_user_weights(num_users: int, num_basis: int, key=None) -> jax.Array:
    """Users' initial weights [U, K']: N(0, 1/K') each (`key`, default key 0), so that users
    start apart and each basis head is used by some of them (equal starting weights would make
    every user's gradient push the same heads, and disagreeing users separate slowly)."""
    key = jax.random.key(0) if key is None else key
    return jax.random.normal(key, (num_users, num_basis), jnp.float32) / jnp.sqrt(num_basis)


def make_personal_reward_loss(model: nn.Module, *, prior_precision: float = 1e-2):
    """`sum_loss(params, batch, rng)` for `train.make_train_step` over params
    {"model": a reward model with K' heads, "users": weights [U, K']}: the negative
    log-likelihood −log σ(w_u · (φ(chosen) − φ(rejected))) of each comparison, plus
    ½·`prior_precision`·‖w_u‖² on every row of a known user (an L2 penalty on the weights
    that grows with the user's number of labels, as weight decay per example does), each row
    weighted by `batch.weight`. Rows of an unknown user (annotator −1) use the users'
    mean weights. Accuracy counts the user's reward's ranking against the label."""
    def sum_loss(params, batch, rng):
        del rng
        phi = batch_rewards(model, params["model"], batch)
        phi = phi if phi.ndim == 3 else phi[..., None]  # [B, 2, K'] (one head: K' = 1)
        users = params["users"]
        known = batch.annotator >= 0
        w = jnp.where(known[:, None], users[jnp.maximum(batch.annotator, 0)],
                      users.mean(0)[None])
        first_chosen = batch.ranks[:, 0] < batch.ranks[:, 1]
        sign = jnp.where(first_chosen, 1.0, -1.0)
        z = sign * jnp.sum(w * (phi[:, 0] - phi[:, 1]), -1)  # w_u · (φ(chosen) − φ(rejected))
        row = batch.weight * batch.is_comparison * (batch.ranks[:, 0] != batch.ranks[:, 1])
        nll = -jax.nn.log_sigmoid(z) + 0.5 * prior_precision * jnp.sum(w * w, -1) * known
        return jnp.sum(nll * row), (jnp.sum(row), {"reward/accuracy": jnp.sum((z > 0) * row)})
    return sum_loss


def population_prior(weights_uk, shrinkage: float = 0.1):
    """(μ₀, Σ₀) of trained users' weights [U, K']: their mean, and their covariance shrunk
    toward its average variance (Σ₀ = (1 − s)·S + s·(tr S / K')·I, Ledoit & Wolf 2004's
    target), so that it is invertible with few users."""
    w = jnp.asarray(weights_uk, jnp.float32)
    mean = w.mean(0)
    centred = w - mean
    cov = centred.T @ centred / max(w.shape[0] - 1, 1)
    k = w.shape[1]
    target = jnp.trace(cov) / k * jnp.eye(k)
    cov = (1 - shrinkage) * cov + shrinkage * target
    return mean, cov + 1e-6 * jnp.eye(k)


def _neg_log_posterior(w, d_nk, valid_n, prior_mean, prior_precision):
    z = d_nk @ w
    delta = w - prior_mean
    return -jnp.sum(jax.nn.log_sigmoid(z) * valid_n) + 0.5 * delta @ prior_precision @ delta


@partial(jax.jit, static_argnames=("steps",))
def laplace_posterior(d_nk, valid_n, prior_mean, prior_cov, init=None, *,
                      steps: int = NEWTON_STEPS):
    """The Laplace posterior N(mean, cov) of a user's weights from comparisons' feature
    differences `d_nk` [N, K'] (chosen − rejected; rows with `valid_n` 0 are padding) and the
    prior N(`prior_mean`, `prior_cov`), by damped Newton from `init` (default: the prior mean).
    Returns (mean [K'], cov [K', K'])."""
    d = jnp.asarray(d_nk, jnp.float32)
    v = jnp.asarray(valid_n, jnp.float32)
    precision0 = jnp.linalg.inv(prior_cov)
    objective = partial(_neg_log_posterior, d_nk=d, valid_n=v, prior_mean=prior_mean,
                        prior_precision=precision0)

    def hessian(w):
        p = jax.nn.sigmoid(d @ w)
        return (d * (v * p * (1 - p))[:, None]).T @ d + precision0

    def newton(w, _):
        p = jax.nn.sigmoid(d @ w)
        grad = -(v * (1 - p)) @ d + precision0 @ (w - prior_mean)
        step = jnp.linalg.solve(hessian(w), grad)
        tries = jnp.stack([w - a * step for a in _STEP_SIZES])
        # the longest step that does not raise the objective beyond float32's resolution (near
        # the mode the values differ by less than it, and the full step is taken)
        now = objective(w)
        ok = jax.vmap(objective)(tries) <= now + 1e-6 * (1.0 + jnp.abs(now))
        return tries[jnp.argmax(ok)], None

    w0 = prior_mean if init is None else init
    mean, _ = jax.lax.scan(newton, jnp.asarray(w0, jnp.float32), None, length=steps)
    return mean, jnp.linalg.inv(hessian(mean))


def predictive_probability(mean, cov, d_ck):
    """P(first ≻ second) for candidate pairs' feature differences `d_ck` [C, K'] under the
    posterior N(mean, cov), by the probit approximation σ(μ·d / √(1 + π dᵀΣd / 8))
    (MacKay 1992; Bishop 2006, eq. 4.153)."""
    var = jnp.einsum("ck,kl,cl->c", d_ck, cov, d_ck)
    return jax.nn.sigmoid((d_ck @ mean) / jnp.sqrt(1.0 + jnp.pi * var / 8.0))


@jax.jit
def expected_information(mean, cov, d_ck):
    """How much each candidate comparison's label is expected to shrink the posterior: the
    entropy reduction ½·log(1 + p(1 − p)·dᵀΣd) of the Laplace posterior when the comparison
    is added (a rank-one update of its precision; the D-optimal design criterion for logistic
    regression, Chaloner & Verdinelli 1995, §3), with p the predictive probability. [C]."""
    p = predictive_probability(mean, cov, d_ck)
    var = jnp.einsum("ck,kl,cl->c", d_ck, cov, d_ck)
    return 0.5 * jnp.log1p(p * (1 - p) * var)
