"""Flax decoder-only transformers (GPT-2 and Llama families), heads, configs, HF import/export."""
from rlhf_jax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "errors": ("CheckpointFormatError", "CorruptCheckpointError",),
    "config": (
        "LORA_TARGETS", "REMAT_POLICIES", "LoraConfig", "RopeScaling", "TransformerConfig",
        "UnsupportedConfigError", "check_model_options", "preset", "rope_inv_freq",
    ),
    "transformer": (
        "DecoderModel", "ModelOutput", "RewardHead", "Transformer", "init_cache", "init_params",
        "last_token_index", "logical_axes", "positions_from_mask",
    ),
    "hf_io": (
        "load_hf_checkpoint", "load_hf_config", "load_tokenizer",
        "save_hf_checkpoint",
    ),
    "hf_config": ("config_from_hf", "config_to_hf",),
    "loading": ("load_or_init_model",),
    "logprobs": (
        "chunked_logprobs", "predicted_logprobs", "response_logprobs", "token_entropy",
        "token_logprobs", "unembedding",
    ),
    "lora": (
        "adapter_params", "add_adapters", "count_params", "frozen_base", "has_adapters",
        "merge_adapters", "quantize_base", "reference_overlay", "rewarded_soup", "soup_weights",
        "strip_adapters",
    ),
    "peft_io": ("load_peft_adapter", "save_peft_adapter",),
})
