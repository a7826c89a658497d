"""generate(): parity with transformers, teacher-forced log-probs, EOS/pad, tracing, sharding."""
import jax
import numpy as np
import pytest
import torch

from rlhf_jax.models import DecoderModel, init_params, load_hf_checkpoint, logical_axes, preset
from rlhf_jax.models import response_logprobs
from rlhf_jax.sampling import SamplingConfig, generate, kv_cache_bytes
from rlhf_jax.sampling import decode as generate_module
from rlhf_jax.sharding import activation_sharding, logical_rules, make_mesh, shard_batch, \
    shard_params
from tests.hf_reference import left_padded_batch, make_hf_model


@pytest.mark.parametrize("name", ["gpt2", "llama3_gqa_bias"])
def test_greedy_equals_transformers_generate(name, tmp_path):
    hf = make_hf_model(name, noise=0.3)
    hf.save_pretrained(tmp_path)
    config, params = load_hf_checkpoint(tmp_path)
    tokens, mask = left_padded_batch(length=8)
    out = generate(params, tokens, mask, jax.random.key(0), config=config,
                   sampling=SamplingConfig(max_new_tokens=12, greedy=True))
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(tokens).long(),
                          attention_mask=torch.tensor(mask).long(), max_new_tokens=12,
                          do_sample=False, pad_token_id=0, eos_token_id=None)[:, 8:].numpy()
    np.testing.assert_array_equal(out.tokens, ref)
    assert len(np.unique(ref)) > 4  # a degenerate constant output would prove little


@pytest.fixture(scope="module")
def llama():
    config = preset("tiny-llama")
    params = init_params(DecoderModel(config), jax.random.key(0))
    params = jax.tree.map(lambda x: x * 8 if x.ndim > 1 else x, params)  # peaky, varied outputs
    tokens, mask = left_padded_batch(length=6, batch=4, vocab=256)
    return config, params, tokens, mask


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.7, top_k=20, top_p=0.9)])
def test_logprobs_equal_teacher_forced(llama, kw):
    config, params, tokens, mask = llama
    out = generate(params, tokens, mask, jax.random.key(3), config=config,
                   sampling=SamplingConfig(max_new_tokens=10, **kw))
    forced = response_logprobs(params, tokens, mask, out.tokens, out.mask, config=config,
                               temperature=kw["temperature"])
    np.testing.assert_allclose(out.logprobs, forced, atol=1e-4)
    assert np.all(np.asarray(out.logprobs)[np.asarray(out.mask) > 0] < 0)


def test_eos_then_pad(llama):
    config, params, tokens, mask = llama
    free = generate(params, tokens, mask, jax.random.key(0), config=config,
                    sampling=SamplingConfig(max_new_tokens=10, greedy=True, pad_token_id=255))
    eos = int(free.tokens[0, 2])
    first = np.argmax(np.asarray(free.tokens) == eos, axis=1)
    has = (np.asarray(free.tokens) == eos).any(axis=1)
    out = generate(params, tokens, mask, jax.random.key(0), config=config,
                   sampling=SamplingConfig(max_new_tokens=10, greedy=True, eos_token_ids=(eos,),
                                           pad_token_id=255))
    toks, m = np.asarray(out.tokens), np.asarray(out.mask)
    for b in range(tokens.shape[0]):
        n = first[b] + 1 if has[b] else 10
        np.testing.assert_array_equal(toks[b, :n], np.asarray(free.tokens)[b, :n])
        assert (toks[b, n:] == 255).all() and (m[b, n:] == 0).all() and (m[b, :n] == 1).all()
        assert int(out.lengths[b]) == n and bool(out.ended_with_eos[b]) == bool(has[b])
        assert (np.asarray(out.logprobs)[b, n:] == 0).all()


def test_stops_early_when_all_rows_finish(llama):
    config, params, tokens, mask = llama
    free = generate(params, tokens, mask, jax.random.key(0), config=config,
                    sampling=SamplingConfig(max_new_tokens=8, greedy=True))
    eos = tuple(int(t) for t in np.asarray(free.tokens)[:, 1])  # every row's second token
    out = generate(params, tokens, mask, jax.random.key(0), config=config,
                   sampling=SamplingConfig(max_new_tokens=8, greedy=True, eos_token_ids=eos))
    assert bool(out.ended_with_eos.all()) and int(out.num_steps) <= 2
    assert out.tokens.shape == (4, 8) and (np.asarray(out.mask)[:, 2:] == 0).all()


def test_one_trace_per_shape(llama, monkeypatch):
    config, params, tokens, mask = llama
    traces = []
    original = generate_module.DecoderModel

    def counting(*a, **k):
        traces.append(1)
        return original(*a, **k)

    monkeypatch.setattr(generate_module, "DecoderModel", counting)
    sampling = SamplingConfig(max_new_tokens=5, temperature=0.9, top_k=7)
    generate._clear_cache()
    a = generate(params, tokens, mask, jax.random.key(1), config=config, sampling=sampling)
    b = generate(params, tokens, mask, jax.random.key(2), config=config, sampling=sampling)
    assert len(traces) == 1
    assert not np.array_equal(a.tokens, b.tokens)  # different keys, different samples
    generate(params, tokens[:2], mask[:2], jax.random.key(1), config=config, sampling=sampling)
    assert len(traces) == 2  # a new shape compiles once more


def test_sharded_decoding_equals_single_device(llama):
    config, params, tokens, mask = llama
    tokens, mask = np.tile(tokens, (2, 1)), np.tile(mask, (2, 1))  # batch 8
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0)
    ref = generate(params, tokens, mask, jax.random.key(5), config=config, sampling=sampling)
    mesh, rules = make_mesh("data=2,fsdp=2,tensor=2"), logical_rules("fsdp_tp")
    sharded = shard_params(params, logical_axes(DecoderModel(config)), mesh, rules)
    batch = shard_batch({"t": tokens, "m": mask}, mesh, rules)
    with activation_sharding(mesh, rules):
        out = generate(sharded, batch["t"], batch["m"], jax.random.key(5), config=config,
                       sampling=sampling)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
    assert out.tokens.sharding.spec[0] == ("data", "fsdp")


def test_cache_bytes_formula():
    cfg = preset("tiny-llama", dtype="bfloat16")
    assert kv_cache_bytes(cfg, 4, 6, 10) == 2 * 2 * 4 * 16 * 2 * 16 * 2


@pytest.mark.parametrize("kw,match", [(dict(max_new_tokens=0), "max_new_tokens=0"),
                                      (dict(max_new_tokens=4, temperature=0.0), "temperature"),
                                      (dict(max_new_tokens=4, top_p=1.5), "top_p=1.5")])
def test_bad_sampling_config(kw, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kw)
