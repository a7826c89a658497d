"""Translation between Hugging Face config objects and `TransformerConfig` (both directions)."""
from __future__ import annotations

from typing import Any

from rlhf_jax.models.config import (SUPPORTED_MODEL_TYPES, RopeScaling, TransformerConfig,
                                    UnsupportedConfigError)

_ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
                  "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _as_dict(hf_config: Any) -> dict:
    if isinstance(hf_config, dict):
        return dict(hf_config)
    return hf_config.to_dict()


def _eos_ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _rope(cfg: dict) -> tuple[float, RopeScaling | None]:
    """Read rope settings from transformers 5 `rope_parameters` or 4.x `rope_theta`/`rope_scaling`."""
    params = cfg.get("rope_parameters") or {}
    legacy = cfg.get("rope_scaling") or {}
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    spec = {**legacy, **params}
    kind = spec.get("rope_type", spec.get("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind == "linear":
        return float(theta), RopeScaling(kind="linear", factor=float(spec["factor"]))
    if kind == "llama3":
        return float(theta), RopeScaling(
            kind="llama3", factor=float(spec["factor"]),
            low_freq_factor=float(spec["low_freq_factor"]),
            high_freq_factor=float(spec["high_freq_factor"]),
            original_max_position_embeddings=int(spec["original_max_position_embeddings"]))
    raise UnsupportedConfigError(
        f"rope type {kind!r} is not supported (supported: default, linear, llama3)")


def _config_kwargs(hf_config: Any) -> dict:
    """Keyword arguments for `TransformerConfig` from a Hugging Face config."""
    cfg = _as_dict(hf_config)
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedConfigError(
            f"model_type={model_type!r} is not supported; expected one of {SUPPORTED_MODEL_TYPES}")
    common = dict(model_type=model_type, vocab_size=int(cfg["vocab_size"]),
                  bos_token_id=cfg.get("bos_token_id"),
                  eos_token_ids=_eos_ids(cfg.get("eos_token_id")),
                  pad_token_id=cfg.get("pad_token_id"))
    if model_type == "gpt2":
        act = cfg.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise UnsupportedConfigError(
                f"gpt2 activation_function={act!r} is not supported (expected gelu_new)")
        if not cfg.get("scale_attn_weights", True) or cfg.get("scale_attn_by_inverse_layer_idx"):
            raise UnsupportedConfigError(
                "gpt2 scale_attn_weights=False / scale_attn_by_inverse_layer_idx=True are not "
                "supported")
        if cfg.get("add_cross_attention"):
            raise UnsupportedConfigError("gpt2 add_cross_attention=True is not supported")
        return dict(common, hidden_size=int(cfg["n_embd"]), num_layers=int(cfg["n_layer"]),
                    num_heads=int(cfg["n_head"]), intermediate_size=cfg.get("n_inner"),
                    max_position_embeddings=int(cfg["n_positions"]),
                    norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
                    qkv_bias=True, out_bias=True, mlp_bias=True, tie_word_embeddings=True)

    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedConfigError(f"{model_type} hidden_act={act!r} is not supported "
                                     "(expected silu)")
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedConfigError("partial_rotary_factor != 1 is not supported")
    theta, scaling = _rope(cfg)
    if model_type == "qwen2":
        biases = dict(qkv_bias=True, out_bias=False, mlp_bias=False)
        layer_types = cfg.get("layer_types") or ()
        uses_window = cfg.get("use_sliding_window", False) or "sliding_attention" in layer_types
        window = cfg.get("sliding_window") if uses_window else None
    elif model_type == "mistral":
        biases = dict(qkv_bias=False, out_bias=False, mlp_bias=False)
        window = cfg.get("sliding_window")
    else:
        attn_bias = bool(cfg.get("attention_bias", False))
        biases = dict(qkv_bias=attn_bias, out_bias=attn_bias,
                      mlp_bias=bool(cfg.get("mlp_bias", False)))
        window = None
    num_heads = int(cfg["num_attention_heads"])
    return dict(common, hidden_size=int(cfg["hidden_size"]),
                num_layers=int(cfg["num_hidden_layers"]), num_heads=num_heads,
                num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
                head_dim=cfg.get("head_dim"), intermediate_size=int(cfg["intermediate_size"]),
                max_position_embeddings=int(cfg["max_position_embeddings"]),
                norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=theta,
                rope_scaling=scaling, sliding_window=window,
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)), **biases)


def config_to_hf(config: TransformerConfig):
    """Build the `transformers` config object equivalent to `config`."""
    import transformers

    eos = list(config.eos_token_ids)
    common = dict(vocab_size=config.vocab_size, bos_token_id=config.bos_token_id,
                  eos_token_id=eos[0] if len(eos) == 1 else (eos or None),
                  pad_token_id=config.pad_token_id,
                  tie_word_embeddings=config.tie_word_embeddings,
                  architectures=[_ARCHITECTURES[config.model_type]])
    if config.is_gpt2:
        return transformers.GPT2Config(
            n_embd=config.hidden_size, n_layer=config.num_layers, n_head=config.num_heads,
            n_inner=config.intermediate_size, n_positions=config.max_position_embeddings,
            layer_norm_epsilon=config.norm_eps, activation_function="gelu_new",
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        s = config.rope_scaling
        rope = {"rope_type": s.kind, "rope_theta": config.rope_theta, "factor": s.factor}
        if s.kind == "llama3":
            rope.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                        original_max_position_embeddings=s.original_max_position_embeddings)
    kwargs = dict(common, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
                  num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
                  head_dim=config.head_dim, intermediate_size=config.intermediate_size,
                  max_position_embeddings=config.max_position_embeddings,
                  rms_norm_eps=config.norm_eps, hidden_act="silu", rope_theta=config.rope_theta,
                  rope_scaling=rope)
    if config.model_type == "llama":
        if config.qkv_bias != config.out_bias:
            raise UnsupportedConfigError(
                "a llama checkpoint has one attention_bias flag for q/k/v and o; "
                f"qkv_bias={config.qkv_bias} and out_bias={config.out_bias} cannot be saved")
        return transformers.LlamaConfig(attention_bias=config.qkv_bias,
                                        mlp_bias=config.mlp_bias, **kwargs)
    if config.model_type == "mistral":
        return transformers.MistralConfig(sliding_window=config.sliding_window, **kwargs)
    return transformers.Qwen2Config(use_sliding_window=config.sliding_window is not None,
                                    sliding_window=config.sliding_window, **kwargs)


def config_from_hf(hf_config: Any, **overrides) -> TransformerConfig:
    """Translate a `transformers.PretrainedConfig` (or its dict); refuse unsupported features."""
    kwargs = _config_kwargs(hf_config)
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)
