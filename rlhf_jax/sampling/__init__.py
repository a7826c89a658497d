"""Jitted autoregressive decoding with a KV cache, and the logit processors it uses."""
from rlhf_jax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "config": ("SamplingConfig",),
    "decode": ("SampleOutput", "generate", "kv_cache_bytes",),
    "processors": (
        "categorical_inverse_cdf", "filter_logits", "sample_token", "top_k_filter",
        "top_p_filter",
    ),
    "text": ("TextSampler",),
})
