"""Reward-model directories: the backbone as a Hugging Face checkpoint plus our reward head.

Layout: the HF files (config.json, model.safetensors, tokenizer) that transformers and
`load_hf_checkpoint` read, plus `reward_head.safetensors` (proj.kernel [D, M], proj.bias [M],
gain [M], bias [M]) and `reward_head.json` (number of outputs and normalisation statistics).
A reward model has no meaningful LM head; when it has none, the export ties it to the embeddings.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.data.record_checks import json_problem
from rlhf_jax.models import (CheckpointFormatError, TransformerConfig, load_hf_checkpoint,
                             save_hf_checkpoint)
from rlhf_jax.models.hf_io import host_array, require_floating
from rlhf_jax.models.lora import merge_adapters
from rlhf_jax.models._safetensors import SafetensorsFile, save_safetensors

HEAD_FILE, HEAD_META = "reward_head.safetensors", "reward_head.json"


def save_reward_model(path, config: TransformerConfig, params: dict, *, tokenizer=None,
                      metadata: Optional[dict] = None, overwrite: bool = True) -> Path:
    """Write a reward model directory (see the module docstring); call it on every process
    (parameters are gathered collectively, process 0 writes)."""
    if "reward_head" not in params:
        raise CheckpointFormatError("params has no reward_head; is this a reward model?")
    config, params = merge_adapters(config, params)  # LoRA: a plain backbone
    export_cfg = config if "lm_head" in params or config.tie_word_embeddings else \
        config.replace(tie_word_embeddings=True)
    path = save_hf_checkpoint(path, export_cfg, params, tokenizer=tokenizer, overwrite=overwrite)
    head = params["reward_head"]
    tensors = {"proj.kernel": head["proj"]["kernel"], "proj.bias": head["proj"]["bias"],
               "gain": head["gain"], "bias": head["bias"]}
    tensors = {k: host_array(v).astype(np.float32) for k, v in tensors.items()}
    if jax.process_index() == 0:
        save_safetensors(str(path / HEAD_FILE), tensors)
        meta = {"num_outputs": int(tensors["gain"].shape[0]), **(metadata or {})}
        (path / HEAD_META).write_text(json.dumps(meta, indent=2))
    return path


def load_reward_model(path, **config_overrides) -> tuple[TransformerConfig, dict, dict]:
    """(config, params with "transformer" and "reward_head", metadata) from a reward directory."""
    path = Path(path)
    for name in (HEAD_FILE, HEAD_META):
        if not (path / name).is_file():
            raise CheckpointFormatError(f"{path}: {name} is missing; expected a reward-model "
                                        "directory written by save_reward_model")
    config, params = load_hf_checkpoint(path, **config_overrides)
    meta = _head_metadata(path / HEAD_META)
    f = SafetensorsFile(path / HEAD_FILE)
    m, d = meta["num_outputs"], config.hidden_size
    expected = {"proj.kernel": (d, m), "proj.bias": (m,), "gain": (m,), "bias": (m,)}
    for name, shape in expected.items():
        if name not in f.keys() or f.shape(name) != shape:
            raise CheckpointFormatError(f"{path / HEAD_FILE}: tensor {name!r} should have shape "
                                        f"{shape}")
        require_floating(f, name)  # as the backbone's: an integer head is refused, not cast
    t = {k: jnp.asarray(np.array(f.get(k)), config.params_dtype) for k in expected}
    params = {"transformer": params["transformer"],
              "reward_head": {"proj": {"kernel": t["proj.kernel"], "bias": t["proj.bias"]},
                              "gain": t["gain"], "bias": t["bias"]}}
    return config, params, meta


def _head_metadata(path: Path) -> dict:
    """`reward_head.json`, with its number of outputs checked."""
    try:
        meta = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # also undecodable bytes, hostile nesting
        raise CheckpointFormatError(f"{path}: {json_problem(e)}") from None
    m = meta.get("num_outputs") if isinstance(meta, dict) else None
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise CheckpointFormatError(f"{path}: 'num_outputs' must be a positive integer, got "
                                    f"{m!r}")
    return meta
