"""Model configuration: one frozen dataclass for GPT-2 and Llama-family decoders.

`models.config_from_hf` (in `hf_config.py`) translates a Hugging Face config (GPT-2, Llama 2/3,
Mistral, Qwen2/2.5) and refuses any feature that would make our logits differ from the reference
implementation.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional


SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")
_DTYPES = ("float32", "bfloat16", "float16")


# What a rematerialised block keeps from its forward pass for the backward pass (Chen et al.
# 2016, "Training deep nets with sublinear memory cost"); everything else is recomputed.
REMAT_POLICIES = {
    "none": None,  # no rematerialisation: every intermediate is kept
    "full": "nothing_saveable",  # keep only the block's inputs; recompute the whole block
    "dots": "dots_saveable",  # keep every matmul output (attention scores included)
    "dots_no_batch": "dots_with_no_batch_dims_saveable",  # keep projections, recompute attention
}


def check_model_options(remat: str, attention: str, logit_chunk: int = 0,
                        prefix: str = "") -> None:
    """Refuse an unknown rematerialisation policy or attention kernel, or a negative vocabulary
    chunk, naming the value."""
    if isinstance(logit_chunk, bool) or not isinstance(logit_chunk, int) or logit_chunk < 0:
        raise ValueError(f"{prefix}logit_chunk={logit_chunk!r}: expected an int >= 0")
    if remat not in REMAT_POLICIES:
        raise ValueError(f"{prefix}remat={remat!r}: expected one of {tuple(REMAT_POLICIES)}")
    if attention not in ("xla", "jax", "cudnn"):
        raise ValueError(f"{prefix}attention={attention!r}: expected 'xla', 'jax' or 'cudnn'")


# Projections that can carry a low-rank adapter. GPT-2 fuses q, k and v into one projection
# (c_attn) and has no gate; its MLP's c_fc is "up" and c_proj "down".
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters W + s·A·B on the `targets` projections (LoRA, Hu et al. 2022, eq. 3).

    A has shape [in, r] (Kaiming-uniform, as PEFT), B [r, out] (zeros, so the adapted model
    equals the base at step 0). The scale s is α/r, or α/√r with `rslora` (Kalajdzievic 2023).
    `dropout` applies to the adapter's input where the stage trains with dropout (SFT, reward
    modelling). `dtype` is the adapters' storage dtype (float32 beside a bfloat16 base keeps small
    updates). rank 0: no adapters.
    """

    rank: int = 0  # adapter rank r; 0: no adapters (full fine-tuning)
    alpha: float = 16.0  # scale numerator α
    dropout: float = 0.0  # dropout on the adapter input while training with dropout
    rslora: bool = False  # scale α/√r instead of α/r (rank-stabilised LoRA)
    targets: tuple[str, ...] = ("q", "k", "v", "o")  # of q,k,v,o,gate,up,down
    dtype: str = "float32"  # adapter parameter dtype
    # frozen base projections stored as int8 with one scale per output channel (QLoRA-style,
    # Dettmers et al. 2023, with int8 instead of NF4): none | int8
    quantize_base: str = "none"
    # base modules trained in full beside the adapters (PEFT's modules_to_save): lm_head. The
    # reference keeps a copy of their initial weights.
    modules_to_save: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", tuple(
                t.strip() for t in self.targets.split(",") if t.strip()))
        object.__setattr__(self, "targets", tuple(self.targets))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0:
            raise ValueError(f"lora.rank={self.rank!r}: expected an int >= 0")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown:
            raise ValueError(f"lora.targets has {unknown}; expected names from {LORA_TARGETS}")
        if self.rank and not self.targets:
            raise ValueError(f"lora.rank={self.rank} but lora.targets is empty")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout={self.dropout}: expected 0 <= rate < 1")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha={self.alpha}: expected > 0")
        if self.dtype not in _DTYPES:
            raise ValueError(f"lora.dtype={self.dtype!r}: expected one of {_DTYPES}")
        if isinstance(self.modules_to_save, str):
            object.__setattr__(self, "modules_to_save", tuple(
                t.strip() for t in self.modules_to_save.split(",") if t.strip()))
        object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save))
        if any(m != "lm_head" for m in self.modules_to_save):
            raise ValueError(f"lora.modules_to_save={self.modules_to_save}: only 'lm_head' is "
                             "supported")
        if self.quantize_base not in ("none", "int8"):
            raise ValueError(f"lora.quantize_base={self.quantize_base!r}: expected 'none' or "
                             "'int8'")

    @property
    def enabled(self) -> bool:
        """True when adapters are on (rank > 0)."""
        return self.rank > 0

    @property
    def quantized(self) -> bool:
        """True when the base projections are stored as int8."""
        return self.quantize_base == "int8"

    @property
    def scale(self) -> float:
        """s = α/r (α/√r with rsLoRA)."""
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def on(self, target: str) -> bool:
        """Whether projection `target` carries an adapter."""
        return self.enabled and target in self.targets


class UnsupportedConfigError(ValueError):
    """A Hugging Face config uses a feature that rlhf_jax does not implement."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Rotary-frequency scaling: "linear" (position interpolation) or "llama3" (Llama 3.1)."""

    kind: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.kind not in ("linear", "llama3"):
            raise ValueError(f"RopeScaling.kind={self.kind!r}: expected 'linear' or 'llama3'")
        if self.factor <= 0:
            raise ValueError(f"RopeScaling.factor={self.factor}: expected a positive number")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Architecture and numerics of a decoder-only transformer.

    `model_type` picks the block family: "gpt2" (learned positions, LayerNorm, GELU MLP, fused QKV,
    tied embeddings) or a Llama-family type ("llama", "mistral", "qwen2": RMSNorm, rotary
    embeddings, SwiGLU, grouped-query attention). `dtype` is the compute dtype, `param_dtype` the
    storage dtype of the parameters; they may differ (e.g. float32 params, bfloat16 compute).
    """

    model_type: str = "gpt2"
    vocab_size: int = 50257
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    num_kv_heads: Optional[int] = None  # None: equal to num_heads (multi-head attention)
    head_dim: Optional[int] = None  # None: hidden_size // num_heads
    intermediate_size: Optional[int] = None  # None: 4 * hidden_size
    max_position_embeddings: int = 1024
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    tie_word_embeddings: bool = True
    sliding_window: Optional[int] = None  # sequences longer than this are refused
    embd_dropout: float = 0.0
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"  # rematerialisation of each block in the backward pass: REMAT_POLICIES
    attention: str = "xla"  # attention kernel: "xla" (ours), "jax" (jax.nn.dot_product_attention
    # on XLA) or "cudnn" (jax.nn.dot_product_attention's fused cuDNN kernel: GPU, bf16/fp16)
    logit_chunk: int = 0  # vocabulary chunk for teacher-forced log-probs (0: full [B, T, V])
    lora: LoraConfig = LoraConfig()  # low-rank adapters (rank 0: none)
    bos_token_id: Optional[int] = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: Optional[int] = None

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedConfigError(
                f"model_type={self.model_type!r} is not supported; expected one of "
                f"{SUPPORTED_MODEL_TYPES}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"TransformerConfig.{name}={value!r}: expected a positive int")
        # Fill derived defaults (frozen dataclass: go through object.__setattr__).
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"TransformerConfig.hidden_size={self.hidden_size} is not divisible by "
                    f"num_heads={self.num_heads}; set head_dim explicitly")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.intermediate_size is None:
            object.__setattr__(self, "intermediate_size", 4 * self.hidden_size)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"TransformerConfig.num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads}")
        if self.is_gpt2 and (self.num_kv_heads != self.num_heads or
                             self.num_heads * self.head_dim != self.hidden_size):
            raise ValueError("gpt2 blocks need num_kv_heads == num_heads and "
                             "num_heads * head_dim == hidden_size")
        if self.is_gpt2 and not self.tie_word_embeddings:
            raise UnsupportedConfigError("gpt2 blocks always tie the LM head to the embeddings")
        if not self.is_gpt2 and self.head_dim % 2:
            raise ValueError(f"TransformerConfig.head_dim={self.head_dim}: rotary embeddings "
                             "need an even head_dim")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"TransformerConfig.{name}={getattr(self, name)!r}: expected "
                                 f"one of {_DTYPES}")
        for name in ("embd_dropout", "attn_dropout", "resid_dropout"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"TransformerConfig.{name}={rate}: expected 0 <= rate < 1")
        if isinstance(self.remat, bool):  # the former on/off switch
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        check_model_options(self.remat, self.attention, self.logit_chunk,
                            prefix="TransformerConfig.")
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", LoraConfig(**self.lora))
        if self.lora.enabled and self.lora.modules_to_save and self.tie_word_embeddings:
            raise ValueError("lora.modules_to_save=lm_head: this model ties its LM head to the "
                             "embeddings, so there is no separate head to train")
        if self.lora.enabled and self.is_gpt2:
            fused = [t for t in ("q", "k", "v") if t in self.lora.targets]
            if fused and len(fused) != 3:
                raise ValueError(f"lora.targets={','.join(self.lora.targets)}: GPT-2 fuses q, k "
                                 "and v into one projection (c_attn); target all three or none")
            if "gate" in self.lora.targets:
                raise ValueError("lora.targets names 'gate', which GPT-2's MLP does not have "
                                 "(its projections are 'up' = c_fc and 'down' = c_proj)")
        if isinstance(self.eos_token_ids, int):
            object.__setattr__(self, "eos_token_ids", (self.eos_token_ids,))
        object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in self.eos_token_ids))

    # ---------------------------------------------------------------- derived views
    @property
    def is_gpt2(self) -> bool:
        """True for the GPT-2 block family, False for the Llama family."""
        return self.model_type == "gpt2"

    @property
    def compute_dtype(self):
        """The compute dtype as a jnp dtype."""
        import jax.numpy as jnp  # here: the config itself is read without JAX (the CLI)
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self):
        """The parameter storage dtype as a jnp dtype."""
        import jax.numpy as jnp
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> "TransformerConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def without_lora(self) -> "TransformerConfig":
        """The base model: the same config with adapters off (an int8 base stays int8). Applied
        to an adapted model's parameters it ignores the adapter leaves, so it is the frozen
        reference at no cost."""
        if not self.lora.enabled:
            return self
        return self.replace(lora=LoraConfig(quantize_base=self.lora.quantize_base))

    def check_length(self, length: int) -> None:
        """Refuse a sequence length that the model cannot attend over exactly."""
        if self.sliding_window is not None and length > self.sliding_window:
            raise UnsupportedConfigError(
                f"sequence length {length} exceeds sliding_window={self.sliding_window}; "
                "sliding-window attention is not implemented, so results would differ from the "
                "reference model. Use sequences of at most sliding_window tokens.")
        if self.is_gpt2 and length > self.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds the learned positions "
                             f"(max_position_embeddings={self.max_position_embeddings})")

    def num_params(self, include_embeddings: bool = True) -> int:
        """Number of parameters of the backbone plus LM head (computed from the shapes)."""
        d, f, h, kv, hd = (self.hidden_size, self.intermediate_size, self.num_heads,
                           self.num_kv_heads, self.head_dim)
        attn = d * (h + 2 * kv) * hd + h * hd * d
        attn += (h + 2 * kv) * hd * self.qkv_bias + d * self.out_bias
        if self.is_gpt2:
            mlp = 2 * d * f + f + d
            norms = 2 * 2 * d
        else:
            mlp = 3 * d * f + (2 * f + d) * self.mlp_bias
            norms = 2 * d
        total = self.num_layers * (attn + mlp + norms) + d * (2 if self.is_gpt2 else 1)
        if include_embeddings:
            total += self.vocab_size * d
            total += 0 if self.tie_word_embeddings else self.vocab_size * d
            total += self.max_position_embeddings * d if self.is_gpt2 else 0
        return total


def rope_inv_freq(config: TransformerConfig):
    """Rotary inverse frequencies θ_i = base^(-2i/d) (Su et al. 2021, RoFormer eq. 15).

    With `rope_scaling.kind == "llama3"` the low frequencies are divided by `factor` and the band
    between them is smoothly interpolated, as in Llama 3.1 (Meta 2024; the rule of
    `transformers`' `_compute_llama3_parameters`); "linear" divides all frequencies by `factor`
    (position interpolation, Chen et al. 2023).
    """
    import numpy as np

    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq.astype(np.float32)
    if scaling.kind == "linear":
        return (inv_freq / scaling.factor).astype(np.float32)
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def preset(name: str, **overrides) -> TransformerConfig:
    """Named configs: "gpt2-small" (124M), "tiny-gpt2" and "tiny-llama" for tests and demos."""
    presets = {
        "gpt2-small": dict(model_type="gpt2", vocab_size=50257, hidden_size=768, num_layers=12,
                           num_heads=12, max_position_embeddings=1024, eos_token_ids=(50256,),
                           bos_token_id=50256),
        "tiny-gpt2": dict(model_type="gpt2", vocab_size=256, hidden_size=64, num_layers=2,
                          num_heads=4, max_position_embeddings=128),
        "tiny-llama": dict(model_type="llama", vocab_size=256, hidden_size=64, num_layers=2,
                           num_heads=4, num_kv_heads=2, intermediate_size=128,
                           max_position_embeddings=128, norm_eps=1e-6, qkv_bias=False,
                           out_bias=False, mlp_bias=False, tie_word_embeddings=False),
    }
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(presets)}")
    return TransformerConfig(**{**presets[name], **overrides})
