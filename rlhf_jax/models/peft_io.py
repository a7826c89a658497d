"""LoRA adapters in PEFT's format, in and out: `adapter_config.json` +
`adapter_model.safetensors`, tensors named `base_model.model.<module>.lora_A.weight` [r, in]
and `lora_B.weight` [out, r], which `peft.PeftModel.from_pretrained` loads onto the
transformers model of the same base."""
from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models._safetensors import SafetensorsFile, save_safetensors
from rlhf_jax.models.config import LoraConfig, TransformerConfig
from rlhf_jax.models.hf_io import (CheckpointFormatError, _base_prefix, _get, _set, _tensor_map,
                                   host_array, replace_dir)
from rlhf_jax.models.lora import strip_adapters

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
# our projection module name -> the LoRA target it belongs to
_TARGET_OF = {"qkv": "q", "q": "q", "k": "k", "v": "v", "out": "o", "gate": "gate", "fc": "up",
              "up": "up", "down": "down"}


def _adapted_modules(config: TransformerConfig) -> list[tuple[tuple[str, ...], str, str, int]]:
    """(our module path, PEFT module name, LoRA target, input dims of the kernel) for every
    projection that can carry an adapter."""
    prefix = _base_prefix(config)
    out = []
    for e in _tensor_map(config):
        if e.path[-1] != "kernel" or e.path[0] != "transformer":
            continue
        module = e.path[:-1]
        out.append((module, prefix + e.name[:-len(".weight")], _TARGET_OF[module[-1]],
                    2 if module[-1] == "out" else 1))
    return out


def _peft_target_names(config: TransformerConfig) -> dict[str, str]:
    """Our target → the `target_modules` entry PEFT matches (a module-name suffix)."""
    names = {}
    for _, name, target, _ in _adapted_modules(config):
        parts = name.split(".")
        # GPT-2 names both c_proj layers alike: keep the parent to tell attn from mlp
        names.setdefault(target, ".".join(parts[-2:]) if config.is_gpt2 else parts[-1])
    return names


def save_peft_adapter(path, config: TransformerConfig, params: dict, *,
                      base_model: str = "") -> Path:
    """Write the adapters of `params` as a PEFT LoRA directory that `peft.PeftModel.from_pretrained`
    loads onto the transformers model of the same base. Call it on every process (adapters are
    gathered collectively; process 0 writes). The directory is assembled under a temporary name
    and moved into place."""
    lora = config.lora
    if not lora.enabled:
        raise ValueError("config.lora.rank is 0: this model has no adapters to save")
    tensors = {}
    for module, name, target, in_dims in _adapted_modules(config):
        if not lora.on(target):
            continue
        try:
            node = _get(params, module)
            a, b = host_array(node["lora_a"]), host_array(node["lora_b"])
        except (KeyError, TypeError):
            raise CheckpointFormatError(f"params has no adapter at {'/'.join(module)} (target "
                                        f"{target!r} is in lora.targets)") from None
        r = lora.rank
        tensors[f"{_PEFT_PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(
            a.reshape(-1, r).T.astype(np.float32))
        tensors[f"{_PEFT_PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(
            b.reshape(r, -1).T.astype(np.float32))
    for name in lora.modules_to_save:  # trained in full: PEFT stores the whole weight
        tensors[f"{_PEFT_PREFIX}{name}.weight"] = np.ascontiguousarray(
            host_array(params[name]["kernel"]).T.astype(np.float32))
    names = _peft_target_names(config)
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank,
        "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "use_rslora": lora.rslora,
        "target_modules": sorted({names[t] for t in lora.targets if t in names}),
        "fan_in_fan_out": config.is_gpt2, "bias": "none", "use_dora": False,
        "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": list(lora.modules_to_save) or None,
        "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {},
        "base_model_name_or_path": base_model or None, "revision": None}
    path = Path(path)
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            save_safetensors(str(tmp / ADAPTER_WEIGHTS), tensors, metadata={"format": "pt"})
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2))
            replace_dir(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _read_adapter_config(path: Path) -> dict:
    file = path / ADAPTER_CONFIG
    if not file.is_file():
        raise CheckpointFormatError(f"{path}: no {ADAPTER_CONFIG}; expected a PEFT LoRA adapter "
                                    f"directory ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})")
    try:
        cfg = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointFormatError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointFormatError(f"{file}: expected a JSON object")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise CheckpointFormatError(f"{file}: peft_type={cfg.get('peft_type')!r}; only LORA "
                                    "adapters are supported")
    r = cfg.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise CheckpointFormatError(f"{file}: field 'r'={r!r}; expected a positive int")
    for field, ok in (("use_dora", (False, None)), ("bias", ("none", None)),
                      ("layers_to_transform", (None,)), ("rank_pattern", ({}, None)),
                      ("alpha_pattern", ({}, None))):
        if cfg.get(field) not in ok:
            raise CheckpointFormatError(f"{file}: field {field!r}={cfg.get(field)!r} is not "
                                        f"supported (expected {ok[0]!r})")
    saved = cfg.get("modules_to_save") or []
    if not isinstance(saved, list) or any(m != "lm_head" for m in saved):
        raise CheckpointFormatError(f"{file}: field 'modules_to_save'={saved!r} is not "
                                    "supported (expected none or ['lm_head'])")
    return cfg


def _ordered_targets(config: TransformerConfig, chosen: set) -> tuple[str, ...]:
    if config.is_gpt2 and "q" in chosen:  # c_attn is q, k and v at once
        chosen = chosen | {"k", "v"}
    return tuple(t for t in ("q", "k", "v", "o", "gate", "up", "down") if t in chosen)


def _targets_from_peft(file: Path, config: TransformerConfig, target_modules) -> tuple[str, ...]:
    """Our targets for PEFT's `target_modules` (a list of module-name suffixes, or a regex)."""
    modules = _adapted_modules(config)
    if isinstance(target_modules, str):
        chosen = {t for _, name, t, _ in modules if re.fullmatch(target_modules, name)}
        if not chosen:
            raise CheckpointFormatError(
                f"{file}: target_modules={target_modules!r} matches no projection of this "
                f"{config.model_type} model")
        return _ordered_targets(config, chosen)
    if not isinstance(target_modules, (list, tuple)) or not target_modules:
        raise CheckpointFormatError(f"{file}: field 'target_modules'={target_modules!r}; "
                                    "expected a non-empty list of module names")
    chosen = set()
    for tm in target_modules:
        hits = {t for _, name, t, _ in modules if name == tm or name.endswith("." + str(tm))}
        if not hits:
            known = sorted({n.split(".")[-1] for _, n, _, _ in modules})
            raise CheckpointFormatError(
                f"{file}: target module {tm!r} is not a projection of this "
                f"{config.model_type} model (its projections: {', '.join(known)})")
        chosen |= hits
    return _ordered_targets(config, chosen)


def load_peft_adapter(path, config: TransformerConfig, params: dict, *,
                      dtype: Optional[str] = None) -> tuple[TransformerConfig, dict]:
    """Read a PEFT LoRA directory onto a base model: (config with `lora` set from
    adapter_config.json, params with the adapter leaves added). A missing tensor, a shape that
    does not match the rank or the model, a tensor the model has no place for, or a target
    module the model lacks stops with a `CheckpointFormatError` naming it."""
    path = Path(path)
    cfg = _read_adapter_config(path)
    file = path / ADAPTER_CONFIG
    targets = _targets_from_peft(file, config, cfg.get("target_modules"))
    try:
        lora = LoraConfig(rank=cfg["r"], alpha=float(cfg.get("lora_alpha", 8)),
                          dropout=float(cfg.get("lora_dropout", 0.0) or 0.0),
                          rslora=bool(cfg.get("use_rslora", False)), targets=targets,
                          dtype=dtype or config.lora.dtype,
                          modules_to_save=tuple(cfg.get("modules_to_save") or ()),
                          quantize_base=config.lora.quantize_base)  # the base stays as given
        new_config = config.replace(lora=lora)
    except (ValueError, TypeError) as e:
        raise CheckpointFormatError(f"{file}: {e}") from None
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise CheckpointFormatError(f"{path}: {ADAPTER_WEIGHTS} is missing")
    f = SafetensorsFile(weights)
    r, used, out = lora.rank, set(), strip_adapters(params)
    for module, name, target, in_dims in _adapted_modules(config):
        if not lora.on(target):
            continue
        try:
            kernel = _get(params, module + ("kernel",))
        except (KeyError, TypeError):
            raise CheckpointFormatError(f"params has no {'/'.join(module)}/kernel for the "
                                        f"adapter on {name}") from None
        in_shape, out_shape = tuple(kernel.shape[:in_dims]), tuple(kernel.shape[in_dims:])
        for leaf, suffix, hf_shape, ours in (
                ("lora_a", "lora_A", (r, math.prod(in_shape)), in_shape + (r,)),
                ("lora_b", "lora_B", (math.prod(out_shape), r), (r,) + out_shape)):
            tensor = f"{_PEFT_PREFIX}{name}.{suffix}.weight"
            alt = f"{_PEFT_PREFIX}{name}.{suffix}.default.weight"
            key = tensor if tensor in f.keys() else alt if alt in f.keys() else None
            if key is None:
                raise CheckpointFormatError(f"{weights}: tensor {tensor!r} is missing (the "
                                            f"adapter of {name}, shape {hf_shape})")
            if f.shape(key) != hf_shape:
                raise CheckpointFormatError(
                    f"{weights}: tensor {key!r} has shape {f.shape(key)}; r={r} in "
                    f"{ADAPTER_CONFIG} and the model imply {hf_shape}")
            used.add(key)
            value = np.asarray(f.get(key), np.float32).T.reshape(ours)
            _set(out, module + (leaf,), jnp.asarray(value, jnp.dtype(lora.dtype)))
    for name in lora.modules_to_save:
        tensor = f"{_PEFT_PREFIX}{name}.weight"
        if name not in params:
            raise CheckpointFormatError(f"{file}: modules_to_save names {name!r}, which this "
                                        "model does not have (a tied LM head?)")
        if tensor not in f.keys():
            raise CheckpointFormatError(f"{weights}: tensor {tensor!r} is missing "
                                        f"(modules_to_save names {name!r})")
        kernel = params[name]["kernel"]
        if f.shape(tensor) != tuple(kernel.shape[::-1]):
            raise CheckpointFormatError(f"{weights}: tensor {tensor!r} has shape "
                                        f"{f.shape(tensor)}; the model implies "
                                        f"{tuple(kernel.shape[::-1])}")
        used.add(tensor)
        out[name] = {**out[name], "kernel": jnp.asarray(np.asarray(f.get(tensor)).T,
                                                        kernel.dtype)}
    extra = sorted(set(f.keys()) - used)
    if extra:
        raise CheckpointFormatError(f"{weights}: tensor {extra[0]!r} matches no adapted "
                                    f"projection of this {config.model_type} model "
                                    f"(targets {','.join(targets)}; {len(extra)} such tensors)")
    return new_config, out
