"""Config translation from/to transformers, refusals of unsupported features, rotary frequencies."""
import json

import numpy as np
import pytest
import torch
import transformers

from rlhf_jax.models import (RopeScaling, UnsupportedConfigError,
                             config_from_hf, config_to_hf, preset, rope_inv_freq)
from tests.hf_reference import TINY_CONFIGS, VOCAB


def _hf_config(name):
    cls_name, kwargs = TINY_CONFIGS[name]
    return getattr(transformers, cls_name)(vocab_size=VOCAB, **kwargs)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_config_round_trip(name):
    config = config_from_hf(_hf_config(name))
    assert config_from_hf(config_to_hf(config)) == config


def test_llama_family_fields():
    c = config_from_hf(_hf_config("llama3_gqa_bias"))
    assert (c.num_kv_heads, c.head_dim, c.qkv_bias, c.out_bias, c.mlp_bias) == (2, 8, True, True,
                                                                                True)
    assert c.rope_scaling == RopeScaling("llama3", 4.0, 1.0, 4.0, 8) and c.rope_theta == 500000.0
    q = config_from_hf(_hf_config("qwen2_gqa_tied"))
    assert (q.qkv_bias, q.out_bias, q.mlp_bias, q.tie_word_embeddings) == (True, False, False, True)
    assert q.sliding_window is None


@pytest.mark.parametrize("scaling", [
    None,
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
])
def test_rope_frequencies_match_transformers(scaling):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = transformers.LlamaConfig(hidden_size=256, num_attention_heads=2, rope_theta=500000.0,
                                  rope_scaling=scaling)
    ours = rope_inv_freq(config_from_hf(hf))
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        ref = 1.0 / (500000.0 ** (torch.arange(0, 128, 2).double() / 128))
    else:
        ref, _ = ROPE_INIT_FUNCTIONS[kind](hf, "cpu")
    np.testing.assert_allclose(ours, ref.numpy(), rtol=2e-6)
    if kind == "llama3":  # the scaling really changes the low frequencies
        assert not np.allclose(ours, rope_inv_freq(config_from_hf(
            transformers.LlamaConfig(hidden_size=256, num_attention_heads=2,
                                     rope_theta=500000.0))))


@pytest.mark.parametrize("cfg,match", [
    ({"model_type": "bert", "vocab_size": 10}, "model_type='bert'"),
    ({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
      "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 8,
      "rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope type 'yarn'"),
    ({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
      "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 8,
      "hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"model_type": "gpt2", "vocab_size": 10, "n_embd": 8, "n_layer": 1, "n_head": 2,
      "n_positions": 8, "scale_attn_by_inverse_layer_idx": True}, "scale_attn"),
])
def test_unsupported_features_refused(cfg, match):
    with pytest.raises(UnsupportedConfigError, match=match):
        config_from_hf(cfg)


def test_sliding_window_refused_only_when_it_would_matter():
    from rlhf_jax.models import DecoderModel, init_params
    import jax

    cfg = preset("tiny-llama", model_type="mistral", sliding_window=6)
    params = init_params(DecoderModel(cfg), jax.random.key(0), length=6)  # within window: fine
    with pytest.raises(UnsupportedConfigError, match="sliding_window=6"):
        DecoderModel(cfg).apply({"params": params}, np.zeros((1, 7), np.int32))


@pytest.mark.parametrize("field,value,match", [
    ("num_heads", 0, "num_heads=0"),
    ("dtype", "float8", "dtype='float8'"),
    ("resid_dropout", 1.5, "resid_dropout=1.5"),
    ("num_kv_heads", 3, "multiple of num_kv_heads=3"),
])
def test_invalid_fields_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        preset("tiny-llama", **{field: value})


def test_num_params_matches_transformers():
    for name in TINY_CONFIGS:
        hf = transformers.AutoModelForCausalLM.from_config(_hf_config(name))
        assert config_from_hf(hf.config).num_params() == hf.num_parameters(), name


def test_config_json_is_plain(tmp_path):
    cfg = preset("tiny-llama")
    config_to_hf(cfg).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
