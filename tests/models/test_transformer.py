"""Model behaviour that parity alone does not pin down: padding, cache, heads, dtypes, dropout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import (DecoderModel, init_cache, init_params, last_token_index,
                             positions_from_mask, preset)


def jit_apply(model):
    return jax.jit(model.apply, static_argnames=("deterministic",))


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-llama"])
def model_and_params(request):
    model = DecoderModel(preset(request.param), heads=("lm", "value", "reward"))
    return model, init_params(model, jax.random.key(0))


def test_positions_and_last_index_by_hand():
    mask = jnp.array([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(positions_from_mask(mask),
                                  [[0, 0, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(last_token_index(mask), [4, 5])


def test_left_padding_does_not_change_real_token_outputs(model_and_params):
    model, params = model_and_params
    seq = jax.random.randint(jax.random.key(1), (1, 7), 0, 256)
    padded = jnp.concatenate([jnp.zeros((1, 3), seq.dtype), seq], axis=1)
    mask = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 7), jnp.int32)], axis=1)
    a = jit_apply(model)({"params": params}, seq)
    b = jit_apply(model)({"params": params}, padded, mask)
    np.testing.assert_allclose(a.logits[0], b.logits[0, 3:], atol=1e-5)
    np.testing.assert_allclose(a.values[0], b.values[0, 3:], atol=1e-5)
    np.testing.assert_allclose(a.reward, b.reward, atol=1e-5)


def test_reward_is_read_at_last_real_token(model_and_params):
    model, params = model_and_params
    tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, 256)
    mask = jnp.array([[0, 1, 1, 1, 1, 1, 0, 0, 0], [1] * 9], jnp.int32)
    out = jit_apply(model)({"params": params}, tokens, mask)
    # right padding after the last real token changes nothing upstream of it
    trimmed = jit_apply(model)({"params": params}, tokens[:1, :6], mask[:1, :6])
    np.testing.assert_allclose(out.reward[0], trimmed.reward[0], atol=1e-5)
    head = params["reward_head"]
    h = np.asarray(out.hidden, np.float64)
    manual = [(h[b, i] @ np.asarray(head["proj"]["kernel"], np.float64)[:, 0]
               + float(head["proj"]["bias"][0])) * float(head["gain"][0]) + float(head["bias"][0])
              for b, i in enumerate([5, 8])]
    np.testing.assert_allclose(out.reward, manual, atol=1e-4)
    # the gain and bias act as an affine normalisation of the reward
    p2 = jax.tree.map(lambda x: x, params)
    p2["reward_head"] = dict(head, gain=head["gain"] * 2.0, bias=head["bias"] + 3.0)
    out2 = jit_apply(model)({"params": p2}, tokens, mask)
    np.testing.assert_allclose(out2.reward, 2 * out.reward + 3, atol=1e-4)


def test_reward_ensemble_shape():
    model = DecoderModel(preset("tiny-llama"), heads=("reward",), num_reward_outputs=4)
    params = init_params(model, jax.random.key(0))
    out = jit_apply(model)({"params": params}, jnp.ones((3, 5), jnp.int32))
    assert out.reward.shape == (3, 4) and out.logits is None
    assert not np.allclose(out.reward[:, 0], out.reward[:, 1])


def test_kv_cache_incremental_equals_full_forward(model_and_params):
    model, params = model_and_params
    cfg = model.config
    tokens = jax.random.randint(jax.random.key(3), (2, 10), 0, 256)
    mask = jnp.ones((2, 10), jnp.int32).at[0, :4].set(0)  # row 0 left-padded
    full = jit_apply(model)({"params": params}, tokens, mask)
    cache = init_cache(cfg, batch=2, max_length=12)
    slot_mask = jnp.zeros((2, 12), jnp.int32).at[:, :10].set(mask)
    out = jit_apply(model)({"params": params}, tokens[:, :6], slot_mask, cache=cache, cache_index=0)
    logits = [out.logits]
    cache = out.cache
    for t in range(6, 10):
        out = jit_apply(model)({"params": params}, tokens[:, t:t + 1], slot_mask, cache=cache,
                          cache_index=t)
        cache = out.cache
        logits.append(out.logits)
    inc = jnp.concatenate(logits, axis=1)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(inc)[real], np.asarray(full.logits)[real], atol=2e-5)
    assert cache[0]["k"].shape == (2, cfg.num_kv_heads, 12, cfg.head_dim)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_dot_product_attention_path_equals_ours(name):
    """attention="jax" (jax.nn.dot_product_attention with a causal flag and a key-padding mask,
    the call attention="cudnn" makes with cuDNN's kernel) against our XLA path: logits, the
    prompt's prefill into the KV cache, and gradients, with left and right padding. The two
    compute the same float32 sums in possibly different association, so they agree to float32
    rounding of O(1) logits (2e-5, as the cache test above)."""
    cfg = preset(name)
    params = init_params(DecoderModel(cfg), jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(7), (3, 9), 0, 256)
    mask = jnp.ones((3, 9), jnp.int32).at[0, :3].set(0).at[1, 7:].set(0)
    ours, fused = DecoderModel(cfg), DecoderModel(cfg.replace(attention="jax"))
    a = jit_apply(ours)({"params": params}, tokens, mask).logits
    b = jit_apply(fused)({"params": params}, tokens, mask).logits
    real = np.asarray(mask, bool)
    assert np.isfinite(np.asarray(b)).all()  # fully masked (padding) queries stay finite
    np.testing.assert_allclose(np.asarray(b)[real], np.asarray(a)[real], atol=2e-5)

    def prefill(model):
        cache = init_cache(cfg, batch=3, max_length=12)
        slots = jnp.zeros((3, 12), jnp.int32).at[:, :9].set(mask)
        return jax.jit(lambda p: model.apply({"params": p}, tokens, slots, cache=cache,
                                             cache_index=0))(params)  # a literal 0: prefill
    pa, pb = prefill(ours), prefill(fused)
    np.testing.assert_allclose(np.asarray(pb.logits)[real], np.asarray(pa.logits)[real],
                               atol=2e-5)
    # cache slots of real tokens (padding slots hold whatever a fully masked query produced,
    # and no real query ever reads them)
    filled = np.zeros((3, 1, 12, 1), bool)
    filled[:, 0, :9, 0] = real
    for ca, cb in zip(pa.cache, pb.cache):
        for name in ("k", "v"):
            x, y = np.broadcast_arrays(np.asarray(ca[name]), filled)
            np.testing.assert_allclose(np.asarray(cb[name])[y], x[y], atol=2e-5)

    def loss(p, model):
        logits = model.apply({"params": p}, tokens, mask).logits
        return jnp.sum(jnp.where(real[..., None], logits, 0.0) ** 2) / real.sum()

    ga = jax.jit(jax.grad(loss), static_argnums=1)(params, ours)
    gb = jax.jit(jax.grad(loss), static_argnums=1)(params, fused)
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(ga))
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(y, x, rtol=0, atol=1e-5 * scale)


def test_bfloat16_compute_with_float32_params():
    cfg32 = preset("tiny-llama")
    model32 = DecoderModel(cfg32)
    params = init_params(model32, jax.random.key(0))
    model16 = DecoderModel(cfg32.replace(dtype="bfloat16"))
    tokens = jax.random.randint(jax.random.key(4), (2, 8), 0, 256)
    out16 = jit_apply(model16)({"params": params}, tokens)
    out32 = jit_apply(model32)({"params": params}, tokens)
    assert out16.hidden.dtype == jnp.bfloat16 and out16.logits.dtype == jnp.float32
    assert jax.tree.leaves(params)[0].dtype == jnp.float32
    err = np.abs(np.asarray(out16.logits) - np.asarray(out32.logits)).max()
    # Stated tolerance: bf16 rounds each activation to 8 significant bits (relative 2^-8); the
    # logits sit behind 2 + 4·layers such roundings (embedding, per block the two norms, attention
    # and MLP outputs, final norm, head input), and the norms keep activations O(1), so to first
    # order |Δz| ≤ (2 + 4L)·2^-8·max|z| — the same bound governs the fused attention path.
    bound = (2 + 4 * cfg32.num_layers) * 2.0 ** -8 * np.abs(np.asarray(out32.logits)).max()
    assert 0 < err <= bound, (err, bound)
    grads = jax.jit(jax.grad(lambda p: model16.apply({"params": p}, tokens).logits.mean()))(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


def test_dropout_switchable():
    cfg = preset("tiny-gpt2", embd_dropout=0.1, attn_dropout=0.1, resid_dropout=0.1)
    model = DecoderModel(cfg)
    params = init_params(model, jax.random.key(0))
    tokens = jnp.ones((2, 8), jnp.int32)
    det = jit_apply(model)({"params": params}, tokens).logits
    det2 = jit_apply(model)({"params": params}, tokens, deterministic=True).logits
    np.testing.assert_array_equal(det, det2)
    a = jit_apply(model)({"params": params}, tokens, deterministic=False,
                    rngs={"dropout": jax.random.key(1)}).logits
    b = jit_apply(model)({"params": params}, tokens, deterministic=False,
                    rngs={"dropout": jax.random.key(2)}).logits
    assert not np.allclose(a, det) and not np.allclose(a, b)
    off = DecoderModel(preset("tiny-gpt2"))  # default: dropout off even when not deterministic
    np.testing.assert_array_equal(
        jit_apply(off)({"params": params}, tokens, deterministic=False).logits, det)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_gives_same_gradients(policy):
    """Rematerialisation recomputes the same float32 operations; only XLA's fusion of the
    recomputed forward may reorder a few of them, so gradients agree to a few ulps of the largest
    gradient entry (rtol 1e-5 of max |g|, ~100 ulps, covers the two layers' reorderings)."""
    cfg = preset("tiny-llama")
    params = init_params(DecoderModel(cfg), jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(5), (2, 8), 0, 256)

    def loss(p, model):
        return model.apply({"params": p}, tokens).logits.std()

    g1 = jax.jit(jax.grad(loss), static_argnums=1)(params, DecoderModel(cfg))
    g2 = jax.jit(jax.grad(loss), static_argnums=1)(params, DecoderModel(cfg.replace(remat=policy)))
    scale = max(float(np.abs(a).max()) for a in jax.tree.leaves(g1))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale)


def test_remat_policy_names_checked():
    assert preset("tiny-llama", remat=True).remat == "full"  # the former switch still works
    with pytest.raises(ValueError, match="remat='some'"):
        preset("tiny-llama", remat="some")
    with pytest.raises(ValueError, match="attention='flash': expected 'xla', 'jax' or 'cudnn'"):
        preset("tiny-llama", attention="flash")


def test_unknown_head_refused():
    with pytest.raises(ValueError, match="unknown heads"):
        init_params(DecoderModel(preset("tiny-gpt2"), heads=("lm", "critic")), jax.random.key(0))


def test_mask_shape_checked(model_and_params):
    model, params = model_and_params
    with pytest.raises(ValueError, match="attention_mask has shape"):
        jit_apply(model)({"params": params}, jnp.ones((2, 5), jnp.int32), jnp.ones((2, 6), jnp.int32))
