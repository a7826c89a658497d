"""Logit parity with transformers' PyTorch models, both directions of the HF round trip."""
import jax
import numpy as np
import pytest
import torch
import transformers

from rlhf_jax.models import DecoderModel, load_hf_checkpoint, save_hf_checkpoint
from tests.hf_reference import TINY_CONFIGS, hf_logits, left_padded_batch, make_hf_model

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def hf_checkpoint(request, tmp_path_factory):
    model = make_hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return request.param, model, path


def _real(x, mask):
    return x[mask.astype(bool)]


def test_logits_match_transformers(hf_checkpoint):
    name, hf_model, path = hf_checkpoint
    config, params = load_hf_checkpoint(path)
    assert config.model_type == hf_model.config.model_type
    tokens, mask = left_padded_batch()
    ours = np.asarray(jax.jit(DecoderModel(config).apply)({"params": params}, tokens, mask).logits)
    ref = hf_logits(hf_model, tokens, mask)
    assert np.abs(_real(ours, mask) - _real(ref, mask)).max() < TOL, name


def test_round_trip_through_transformers(hf_checkpoint, tmp_path):
    name, _, path = hf_checkpoint
    config, params = load_hf_checkpoint(path)
    out = save_hf_checkpoint(tmp_path / "export", config, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    tokens, mask = left_padded_batch(seed=1)
    ours = np.asarray(jax.jit(DecoderModel(config).apply)({"params": params}, tokens, mask).logits)
    theirs = hf_logits(reloaded, tokens, mask)
    assert np.abs(_real(ours, mask) - _real(theirs, mask)).max() < TOL, name
    config2, params2 = load_hf_checkpoint(out)
    assert config2 == config
    for a, b in zip(_leaves(params), _leaves(params2)):
        np.testing.assert_array_equal(a, b)


def test_sharded_safetensors_with_index(tmp_path):
    config, params = load_hf_checkpoint(_save(make_hf_model("llama3_gqa_bias"), tmp_path / "a"))
    out = save_hf_checkpoint(tmp_path / "b", config, params, max_shard_bytes=20_000)
    files = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(files) > 2 and (out / "model.safetensors.index.json").is_file()
    _, params2 = load_hf_checkpoint(out)
    for a, b in zip(_leaves(params), _leaves(params2)):
        np.testing.assert_array_equal(a, b)
    # transformers reads our sharded layout too
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    tokens, mask = left_padded_batch()
    ours = np.asarray(jax.jit(DecoderModel(config).apply)({"params": params}, tokens, mask).logits)
    assert np.abs(_real(ours, mask) - _real(hf_logits(hf, tokens, mask), mask)).max() < TOL


def test_bfloat16_checkpoint_loads(tmp_path):
    hf_model = make_hf_model("qwen2_gqa_tied")
    hf_model.to(torch.bfloat16).save_pretrained(tmp_path)
    config, params = load_hf_checkpoint(tmp_path)  # upcast to float32 params
    assert params["transformer"]["wte"]["embedding"].dtype == np.float32
    reference = hf_model.float()  # same bf16-rounded weights, float32 compute
    tokens, mask = left_padded_batch()
    ours = np.asarray(jax.jit(DecoderModel(config).apply)({"params": params}, tokens, mask).logits)
    assert np.abs(_real(ours, mask) - _real(hf_logits(reference, tokens, mask), mask)).max() < TOL


def _save(model, path):
    model.save_pretrained(path)
    return path


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]
