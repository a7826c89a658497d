"""Log-probabilities and entropy over vocabulary chunks against float64 references and the
full-logits path; the chunked path never holds [B, T, V] logits."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses
from rlhf_jax.models import (DecoderModel, chunked_logprobs, init_params, preset,
                             response_logprobs, token_entropy, token_logprobs, unembedding)

U = 2.0 ** -24  # float32 unit roundoff


def _problem(v=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(2, 5, d)).astype(np.float32)
    w = (rng.normal(size=(v, d)) / 2).astype(np.float32)
    tokens = rng.integers(0, v, (2, 5)).astype(np.int32)
    tokens[0, 0] = v - 1  # a token in the last, partial chunk
    return h, w, tokens


def _reference(h, w, tokens, temperature):
    """float64 log-probs, entropy and the bound on how far a float32 computation may be from them.

    A float32 logit z = h·w/T (D products) is off by at most D·u·Σ|h||w|/T; log-sum-exp and the
    picked logit move by at most that much each, and summing V exponentials adds at most V·u
    relative error to the sum (V·u absolute in its log). The entropy H = lse − Σ p z moves by at
    most δ·(1 + 2 max|z|) for logit errors δ, and its V-term sums add V·u·(1 + max|z|).
    """
    z = np.einsum("btd,vd->btv", h.astype(np.float64), w.astype(np.float64)) / temperature
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    logp = np.take_along_axis(z, tokens[..., None], -1)[..., 0] - lse
    p = np.exp(z - lse[..., None])
    entropy = lse - (p * z).sum(-1)
    d, v = h.shape[-1], w.shape[0]
    delta = d * U * (np.abs(h) @ np.abs(w).T).max() / temperature
    zmax = np.abs(z).max()
    return logp, entropy, 2 * delta + (v + 4) * U, delta * (1 + 2 * zmax) + (v + 4) * U * (1 + zmax)


@pytest.mark.parametrize("chunk", [64, 300, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_matches_float64_and_the_full_path(chunk, temperature):
    h, w, tokens = _problem()
    ref_logp, ref_ent, tol_logp, tol_ent = _reference(h, w, tokens, temperature)
    logp, ent = jax.jit(chunked_logprobs, static_argnames=("chunk", "entropy"))(
        h, w, tokens, temperature, chunk=chunk, entropy=True)
    np.testing.assert_allclose(logp, ref_logp, rtol=0, atol=tol_logp)
    np.testing.assert_allclose(ent, ref_ent, rtol=0, atol=tol_ent)
    logits = jnp.einsum("btd,vd->btv", h, w)
    full = token_logprobs(logits, tokens, temperature)
    np.testing.assert_allclose(logp, full, rtol=0, atol=2 * tol_logp)  # both within tol of f64
    np.testing.assert_allclose(ent, token_entropy(logits, temperature), rtol=0, atol=2 * tol_ent)


def test_chunked_gradients_match_the_full_path():
    """d/dh and d/dW of Σ log p + Σ H. Each gradient entry is a softmax-weighted sum over the V
    logits of terms ≤ max|z|·max|w|/T (for h) resp. max|z|·max|h|/T (for W) in size, each carrying
    the logit and summation errors above, so the two float32 paths agree to
    2·(D + V)·u·(1 + max|z|)·max(|h|,|w|)·(number of positions)/T."""
    h, w, tokens = _problem(v=300, d=16, seed=1)
    t = 0.8

    def chunked(h, w):
        logp, ent = chunked_logprobs(h, w, tokens, t, chunk=64, entropy=True)
        return logp.sum() + ent.sum()

    def full(h, w):
        logits = jnp.einsum("btd,vd->btv", h, w)
        return token_logprobs(logits, tokens, t).sum() + token_entropy(logits, t).sum()

    gc = jax.jit(jax.grad(chunked, argnums=(0, 1)))(h, w)
    gf = jax.jit(jax.grad(full, argnums=(0, 1)))(h, w)
    zmax = float(np.abs(np.einsum("btd,vd->btv", h, w)).max()) / t
    scale = max(np.abs(h).max(), np.abs(w).max())
    tol = 2 * (16 + 300) * U * (1 + zmax) * scale * tokens.size / t
    for a, b in zip(gc, gf):
        np.testing.assert_allclose(a, b, rtol=0, atol=tol)
        assert np.abs(b).max() > 100 * tol  # the comparison is not vacuous


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_model_paths_agree(name):
    """A model with `logit_chunk` scores responses and computes the LM loss like the full path
    (tied and untied heads)."""
    cfg = preset(name)
    params = init_params(DecoderModel(cfg), jax.random.key(0))
    rng = np.random.default_rng(0)
    prompt = jnp.asarray(rng.integers(0, cfg.vocab_size, (3, 4)), jnp.int32)
    response = jnp.asarray(rng.integers(0, cfg.vocab_size, (3, 6)), jnp.int32)
    pmask = jnp.ones_like(prompt).at[0, :2].set(0)
    rmask = jnp.ones_like(response).at[1, 4:].set(0)
    chunked_cfg = dataclasses.replace(cfg, logit_chunk=48)  # 256 = 5 full chunks + a partial one
    a = response_logprobs(params, prompt, pmask, response, rmask, config=cfg, temperature=0.9)
    b = response_logprobs(params, prompt, pmask, response, rmask, config=chunked_cfg,
                          temperature=0.9)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)  # |log p| ≲ 6: ~100 ulps
    assert (np.asarray(b)[1, 4:] == 0).all()
    tokens = jnp.concatenate([prompt, response], 1)
    mask = jnp.concatenate([pmask, rmask], 1)
    targets = losses.next_token_targets(mask)
    full = losses.next_token_nll_sum(
        DecoderModel(cfg).apply({"params": params}, tokens, mask).logits, tokens, targets)
    out = DecoderModel(chunked_cfg).apply({"params": params}, tokens, mask, skip_logits=True)
    assert out.logits is None
    chunk = losses.model_nll_sum(out, params, chunked_cfg, tokens, targets)
    np.testing.assert_allclose(chunk[0], full[0], rtol=1e-5)
    assert chunk[1] == full[1]
    assert unembedding(params, cfg).shape == (cfg.vocab_size, cfg.hidden_size)


def test_chunked_gradient_never_holds_full_logits():
    """Compiled memory of d/dh of the summed log-probs: the full path's temporaries hold
    [B, T, V] float32 logits (and their softmax); the chunked path's stay far below one such
    array."""
    b, t, d, v = 4, 64, 32, 32768
    h = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
    w = jax.ShapeDtypeStruct((v, d), jnp.float32)
    tokens = jax.ShapeDtypeStruct((b, t), jnp.int32)
    logits_bytes = b * t * v * 4

    def temp(fn):
        compiled = jax.jit(jax.grad(fn)).lower(h, w, tokens).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    full = temp(lambda h, w, y: token_logprobs(jnp.einsum("btd,vd->btv", h, w), y).sum())
    chunked = temp(lambda h, w, y: chunked_logprobs(h, w, y, chunk=2048)[0].sum())
    assert full >= logits_bytes
    assert chunked < logits_bytes / 4, (chunked, logits_bytes)
