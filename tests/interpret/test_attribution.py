"""Token attributions against float64 PyTorch autograd on the same Hugging Face model, and
integrated gradients' completeness."""
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rlhf_jax import models
from rlhf_jax.interpret import attribution as A
from tests.hf_reference import left_padded_batch, make_hf_model

HEAD_SCALE = 3.0  # a head large enough that rewards differ by O(1) between rows


def _reward_model(name):
    """(hf model in float64, our config, our reward params with a random head)."""
    hf = make_hf_model(name)
    d = tempfile.mkdtemp()
    hf.save_pretrained(d)
    config, params = models.load_hf_checkpoint(d)
    rng = np.random.default_rng(0)
    head = {"proj": {"kernel": jnp.asarray(rng.normal(0, HEAD_SCALE, (config.hidden_size, 1)),
                                           jnp.float32),
                     "bias": jnp.asarray([0.1], jnp.float32)},
            "gain": jnp.asarray([1.5], jnp.float32), "bias": jnp.asarray([-0.2], jnp.float32)}
    return hf.double(), config, {"transformer": params["transformer"], "reward_head": head}


def _torch_target(hf, head, kind, tokens, mask, start=None):
    """f(embeds [B, T, D] float64) -> [B] by transformers in float64: our reward head on the
    last real token, or Σ response log-probs."""
    am = torch.tensor(np.asarray(mask), dtype=torch.long)
    pos = (am.cumsum(-1) - 1).clamp(min=0) * am
    ids = torch.tensor(np.asarray(tokens), dtype=torch.long)

    def f(embeds, mask_override=None):
        m = am if mask_override is None else mask_override
        p = (m.cumsum(-1) - 1).clamp(min=0) * m
        out = hf(inputs_embeds=embeds, attention_mask=m, position_ids=p,
                 output_hidden_states=True)
        if kind == "reward":
            h = out.hidden_states[-1]
            last = h.shape[1] - 1 - torch.argmax(torch.flip(m, [1]), dim=1)
            hl = h[torch.arange(h.shape[0]), last]
            k = torch.tensor(np.asarray(head["proj"]["kernel"]), dtype=torch.float64)[:, 0]
            raw = hl @ k + float(head["proj"]["bias"][0])
            return raw * float(head["gain"][0]) + float(head["bias"][0])
        logp = torch.log_softmax(out.logits[:, start - 1:-1], -1)
        picked = torch.gather(logp, -1, ids[:, start:, None])[..., 0]
        return torch.where(m[:, start:] > 0, picked, torch.zeros_like(picked)).sum(-1)

    embeds = hf.get_input_embeddings()(ids).detach()
    del pos
    return f, embeds, am


def _grad(f, e):
    e = e.clone().requires_grad_(True)
    f(e).sum().backward()
    return e.grad


def _references(hf, head, kind, tokens, mask, start=None, steps=64, baseline_token=0,
                replace=False):
    f, x, am = _torch_target(hf, head, kind, tokens, mask, start)
    gxi = (_grad(f, x) * x).sum(-1) * am
    base = hf.get_input_embeddings()(torch.full_like(am, baseline_token)).detach()
    x0 = torch.where(am[..., None] > 0, base, x)
    total = torch.zeros_like(x)
    for k in range(steps):  # the midpoint rule, written out
        total += _grad(f, x0 + (k + 0.5) / steps * (x - x0)) / steps
    ig = ((x - x0) * total).sum(-1) * am
    with torch.no_grad():
        value = f(x)
        if replace:  # token t's embedding swapped for the baseline token's
            occ = torch.stack([value - f(torch.where((torch.arange(am.shape[1]) == t)[None, :, None],
                                                     base, x))
                               for t in range(am.shape[1])], 1) * am
        else:  # token t dropped from the mask
            occ = torch.stack([value - f(x, am * (torch.arange(am.shape[1]) != t).long())
                               for t in range(am.shape[1])], 1) * am
    return {"gradient_x_input": gxi, "integrated_gradients": ig, "occlusion": occ,
            "value": value}


def _close(ours, ref):
    """float32 against float64: a relative error of ~1e-6 per operation over a few hundred
    operations and 64 accumulated gradients stays far below 1e-3 of the largest attribution."""
    ref = ref.detach().numpy()
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-3,
                               atol=1e-3 * max(np.abs(ref).max(), 1e-3))


@pytest.mark.parametrize("name", ["llama_mha_tied", "gpt2"])
def test_reward_attributions_match_torch_float64(name):
    hf, config, params = _reward_model(name)
    tokens, mask = left_padded_batch(seed=1, batch=3, length=9)
    target = A.RewardTarget(config)
    ref = _references(hf, params["reward_head"], "reward", tokens, mask)
    ours = {"gradient_x_input": A.gradient_x_input(params, tokens, mask, target=target),
            "integrated_gradients": A.integrated_gradients(params, tokens, mask, target=target,
                                                           steps=64, rule="midpoint",
                                                           baseline_token=0),
            "occlusion": A.occlusion(params, tokens, mask, target=target)}
    for method, attr in ours.items():
        _close(attr.scores, ref[method])
        _close(attr.value, ref["value"])
        assert np.all(np.asarray(attr.scores)[mask == 0] == 0)
    assert np.abs(np.asarray(ours["occlusion"].scores)).max() > 1e-3  # not trivially zero


def test_policy_logprob_attributions_match_torch_float64():
    hf = make_hf_model("llama3_gqa_bias")
    d = tempfile.mkdtemp()
    hf.save_pretrained(d)
    config, params = models.load_hf_checkpoint(d)
    tokens, mask = left_padded_batch(seed=2, batch=3, length=10)
    start = 6
    target = A.LogProbTarget(config, response_start=start)
    ref = _references(hf.double(), None, "logprob", tokens, mask, start=start, replace=True)
    ig = A.integrated_gradients(params, tokens, mask, target=target, steps=64, rule="midpoint",
                                baseline_token=0)
    _close(ig.scores, ref["integrated_gradients"])
    _close(A.gradient_x_input(params, tokens, mask, target=target).scores,
           ref["gradient_x_input"])
    _close(A.occlusion(params, tokens, mask, target=target, replace_token=0).scores,
           ref["occlusion"])
    with pytest.raises(ValueError, match="needs replace_token"):
        A.occlusion(params, tokens, mask, target=target)
    # the target is the teacher-forced response log-probability the rest of the library uses
    lp = models.response_logprobs(params, tokens[:, :start], mask[:, :start], tokens[:, start:],
                                  mask[:, start:], config=config).sum(-1)
    np.testing.assert_allclose(np.asarray(ig.value), np.asarray(lp), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("rule", ["trapezoid", "midpoint"])
def test_integrated_gradients_completeness_at_64_steps(preset, rule):
    """|Σ attributions − (f(x) − f(x'))| ≤ 1% of |f(x) − f(x')| (Sundararajan et al. 2017,
    Proposition 1) with the pad-token baseline, for the reward and for a policy's log-prob."""
    cfg = models.preset(preset)
    tokens = jax.random.randint(jax.random.key(1), (4, 12), 1, cfg.vocab_size)
    mask = jnp.ones((4, 12), jnp.int32).at[0, :3].set(0).at[1, :5].set(0)
    rm = models.init_params(models.DecoderModel(cfg, heads=("reward",)), jax.random.key(0))
    rm["reward_head"]["gain"] = rm["reward_head"]["gain"] * 5.0
    lm = models.init_params(models.DecoderModel(cfg), jax.random.key(0))
    for params, target in ((rm, A.RewardTarget(cfg)), (lm, A.LogProbTarget(cfg, 6))):
        ig = A.integrated_gradients(params, tokens, mask, target=target, steps=64, rule=rule,
                                    baseline_token=0)
        delta = np.asarray(ig.value - ig.baseline_value)
        assert np.all(np.abs(delta) > 1e-3)
        gap = delta - np.asarray(ig.scores).sum(-1)
        np.testing.assert_allclose(gap, np.asarray(ig.completeness_gap), atol=1e-4)
        assert np.all(np.abs(gap) <= 0.01 * np.abs(delta)), (preset, rule, gap / delta)


def test_inputs_embeds_path_equals_the_token_path():
    cfg = models.preset("tiny-llama")
    model = models.DecoderModel(cfg, heads=("lm", "reward"))
    params = models.init_params(model, jax.random.key(0))
    tokens, mask = left_padded_batch(seed=3, batch=2, length=8, vocab=cfg.vocab_size)
    a = model.apply({"params": params}, tokens, mask)
    e = model.apply({"params": params}, tokens, method="embed")
    b = model.apply({"params": params}, None, mask, inputs_embeds=e)
    np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(b.logits))
    np.testing.assert_array_equal(np.asarray(a.reward), np.asarray(b.reward))


def test_quadrature_integrates_polynomials():
    """Trapezoid and midpoint are exact for linear integrands, the right Riemann sum is not."""
    for rule in A.RULES:
        a, w = A.quadrature(8, rule)
        assert float(w.sum()) == pytest.approx(1.0)
        err = float((w * a).sum()) - 0.5
        assert (abs(err) < 1e-6) == (rule != "riemann_right")
    with pytest.raises(ValueError, match="rule='simpson'"):
        A.quadrature(8, "simpson")
