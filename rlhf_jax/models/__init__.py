"""Flax decoder-only transformers (GPT-2 and Llama families), heads, configs, HF import/export."""
from rlhf_jax.models.config import (LORA_TARGETS, REMAT_POLICIES, LoraConfig, RopeScaling,
                                    TransformerConfig,
                                    UnsupportedConfigError, check_model_options, preset,
                                    rope_inv_freq)
from rlhf_jax.models.transformer import (DecoderModel, ModelOutput, RewardHead, Transformer,
                                         init_cache, init_params, last_token_index, logical_axes,
                                         positions_from_mask)
from rlhf_jax.models.hf_io import (CheckpointFormatError, load_hf_checkpoint, load_hf_config,
                                   load_tokenizer, save_hf_checkpoint)
from rlhf_jax.models._safetensors import CorruptCheckpointError
from rlhf_jax.models.hf_config import config_from_hf, config_to_hf
from rlhf_jax.models.loading import load_or_init_model
from rlhf_jax.models.logprobs import (chunked_logprobs, predicted_logprobs, response_logprobs,
                                      token_entropy, token_logprobs, unembedding)
from rlhf_jax.models.lora import (adapter_params, add_adapters, count_params, frozen_base,
                                  has_adapters, merge_adapters, quantize_base,
                                  reference_overlay, strip_adapters)
from rlhf_jax.models.peft_io import load_peft_adapter, save_peft_adapter
