"""Models from a local Hugging Face directory or a preset, created directly in their shardings."""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax

from rlhf_jax import sharding
from rlhf_jax.models.config import preset
from rlhf_jax.models.hf_io import load_hf_checkpoint, load_hf_config
from rlhf_jax.models.lora import adapter_params, add_adapters, quantize_base
from rlhf_jax.models.transformer import DecoderModel, init_params, logical_axes


def load_or_init_model(model_dir: str, preset_name: str, mesh, rules, key, *,
                       heads: Sequence[str] = ("lm",), num_reward_outputs: int = 1,
                       **overrides):
    """(config, model, params): from a local Hugging Face directory, else a random preset.

    Parameters are created directly in their shardings. From a checkpoint, only the heads it
    lacks (value, reward) and the LoRA adapters (`overrides["lora"]`) are randomly initialised:
    the unused part of the jitted init is dropped by the compiler, so the backbone never exists
    twice.
    """
    config = (load_hf_config(model_dir) if model_dir else
              preset(preset_name)).replace(**overrides)
    model = DecoderModel(config, heads=tuple(heads), num_reward_outputs=num_reward_outputs)
    # an int8 base is loaded (or initialised) in float first, then quantized
    built = model if not config.lora.quantized else DecoderModel(
        config.replace(lora=dataclasses.replace(config.lora, quantize_base="none")),
        heads=tuple(heads), num_reward_outputs=num_reward_outputs)
    shardings = _shardings(built, mesh, rules)
    loaded = {}
    if model_dir:
        _, loaded = load_hf_checkpoint(
            model_dir, lm_head="lm" in heads,
            shardings={k: shardings[k] for k in ("transformer", "lm_head") if k in shardings},
            **overrides)
    params = add_adapters(loaded, _initializer(built, mesh, rules, frozenset(loaded))(key))
    if config.lora.quantized:
        params = jax.jit(quantize_base, out_shardings=_shardings(model, mesh, rules),
                         donate_argnums=0)(params)
    return config, model, params


@functools.lru_cache(maxsize=16)
def _shardings(model, mesh, rules):
    """The shardings of `model`'s parameters on `mesh` (traced once per model, mesh and rules;
    read-only)."""
    abstract = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    return sharding.param_shardings(abstract, logical_axes(model), mesh, rules)


@functools.lru_cache(maxsize=16)
def _initializer(built, mesh, rules, loaded: frozenset):
    """`key -> params` jitted into their shardings, for the parameters a checkpoint did not
    supply (`loaded`: its top-level keys) and the adapters; compiled once per model, mesh, rules
    and `loaded`, so that initialising again with another key reuses the program."""
    shardings = _shardings(built, mesh, rules)
    fresh = {k: s for k, s in shardings.items() if k not in loaded}
    fresh.update({k: v for k, v in adapter_params(
        {k: s for k, s in shardings.items() if k in loaded}).items()})

    def init(k):
        return _pick(init_params(built, k), fresh)
    return jax.jit(init, out_shardings=fresh)


def _pick(tree, like):
    """The part of `tree` with the structure of `like` (nested dicts)."""
    return {k: _pick(tree[k], v) if isinstance(v, dict) else tree[k] for k, v in like.items()}

