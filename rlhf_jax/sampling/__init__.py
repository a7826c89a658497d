"""Jitted autoregressive decoding with a KV cache, and the logit processors it uses."""
from rlhf_jax.sampling.decode import SampleOutput, SamplingConfig, generate, kv_cache_bytes
from rlhf_jax.sampling.processors import (categorical_inverse_cdf, filter_logits, sample_token,
                                          top_k_filter, top_p_filter)
from rlhf_jax.sampling.text import TextSampler
