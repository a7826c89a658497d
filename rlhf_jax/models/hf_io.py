"""Hugging Face interop: local checkpoint directories in, and back out, without pickle.

A directory holds `config.json` and `model.safetensors` (or sharded `model-*.safetensors` with
`model.safetensors.index.json`), and usually tokenizer files. Our parameter tree differs from the
PyTorch state dict only by name and layout; `_tensor_map` is the one table that relates them.

Host memory when loading: tensors are memory-mapped; each is converted one at a time. Without
`shardings` a converted tensor is copied to the default device. With `shardings`, every device
receives only its slice (`jax.make_array_from_callback`): tensors whose layout only needs a reshape
are read slice by slice straight from the memory map; tensors that need a transpose (Llama
projections) are materialised whole on the host once, so peak host memory is about one tensor, and
no device ever holds more than its shard.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np

from rlhf_jax.models._safetensors import CorruptCheckpointError, SafetensorsFile, save_safetensors
from rlhf_jax.models.errors import CheckpointFormatError
from rlhf_jax.models.hf_config import config_from_hf, config_to_hf
from rlhf_jax.models.config import SUPPORTED_MODEL_TYPES, TransformerConfig, UnsupportedConfigError

log = logging.getLogger(__name__)

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclasses.dataclass(frozen=True)
class _Tensor:
    path: tuple[str, ...]  # our parameter path
    name: str  # Hugging Face name, without the base-model prefix
    ours: tuple[int, ...]  # our shape
    hf: tuple[int, ...]  # Hugging Face shape
    transpose: bool  # Linear weights are [out, in] in torch; our kernels are [in, ...]
    prefixed: bool = True  # False for names outside the base model ("lm_head.weight")

    def to_ours(self, arr: np.ndarray) -> np.ndarray:
        return (arr.T if self.transpose else arr).reshape(self.ours)

    def to_hf(self, arr: np.ndarray) -> np.ndarray:
        if self.transpose:
            return arr.reshape(self.hf[::-1]).T
        return arr.reshape(self.hf)


def _tensor_map(cfg: TransformerConfig) -> list[_Tensor]:
    """Every parameter of the backbone + LM head and its Hugging Face counterpart."""
    d, f, h, kv, hd, v = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                          cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size)
    out: list[_Tensor] = []

    def add(path, name, ours, hf, transpose=False, prefixed=True):
        out.append(_Tensor(tuple(path.split("/")), name, tuple(ours), tuple(hf), transpose,
                           prefixed))

    if cfg.is_gpt2:
        add("transformer/wte/embedding", "wte.weight", (v, d), (v, d))
        add("transformer/wpe/embedding", "wpe.weight", (cfg.max_position_embeddings, d),
            (cfg.max_position_embeddings, d))
        for i in range(cfg.num_layers):
            p, n = f"transformer/block_{i}", f"h.{i}"
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                add(f"{p}/{ours}/scale", f"{n}.{theirs}.weight", (d,), (d,))
                add(f"{p}/{ours}/bias", f"{n}.{theirs}.bias", (d,), (d,))
            add(f"{p}/attn/qkv/kernel", f"{n}.attn.c_attn.weight", (d, 3, h, hd), (d, 3 * d))
            add(f"{p}/attn/qkv/bias", f"{n}.attn.c_attn.bias", (3, h, hd), (3 * d,))
            add(f"{p}/attn/out/kernel", f"{n}.attn.c_proj.weight", (h, hd, d), (d, d))
            add(f"{p}/attn/out/bias", f"{n}.attn.c_proj.bias", (d,), (d,))
            add(f"{p}/mlp/fc/kernel", f"{n}.mlp.c_fc.weight", (d, f), (d, f))
            add(f"{p}/mlp/fc/bias", f"{n}.mlp.c_fc.bias", (f,), (f,))
            add(f"{p}/mlp/down/kernel", f"{n}.mlp.c_proj.weight", (f, d), (f, d))
            add(f"{p}/mlp/down/bias", f"{n}.mlp.c_proj.bias", (d,), (d,))
        add("transformer/final_norm/scale", "ln_f.weight", (d,), (d,))
        add("transformer/final_norm/bias", "ln_f.bias", (d,), (d,))
        return out

    add("transformer/wte/embedding", "embed_tokens.weight", (v, d), (v, d))
    for i in range(cfg.num_layers):
        p, n = f"transformer/block_{i}", f"layers.{i}"
        add(f"{p}/attn_norm/scale", f"{n}.input_layernorm.weight", (d,), (d,))
        add(f"{p}/mlp_norm/scale", f"{n}.post_attention_layernorm.weight", (d,), (d,))
        for ours, theirs, heads in (("q", "q_proj", h), ("k", "k_proj", kv), ("v", "v_proj", kv)):
            add(f"{p}/attn/{ours}/kernel", f"{n}.self_attn.{theirs}.weight", (d, heads, hd),
                (heads * hd, d), transpose=True)
            if cfg.qkv_bias:
                add(f"{p}/attn/{ours}/bias", f"{n}.self_attn.{theirs}.bias", (heads, hd),
                    (heads * hd,))
        add(f"{p}/attn/out/kernel", f"{n}.self_attn.o_proj.weight", (h, hd, d), (d, h * hd),
            transpose=True)
        if cfg.out_bias:
            add(f"{p}/attn/out/bias", f"{n}.self_attn.o_proj.bias", (d,), (d,))
        for ours, theirs, shape in (("gate", "gate_proj", (d, f)), ("up", "up_proj", (d, f)),
                                    ("down", "down_proj", (f, d))):
            add(f"{p}/mlp/{ours}/kernel", f"{n}.mlp.{theirs}.weight", shape, shape[::-1],
                transpose=True)
            if cfg.mlp_bias:
                add(f"{p}/mlp/{ours}/bias", f"{n}.mlp.{theirs}.bias", shape[1:], shape[1:])
    add("transformer/final_norm/scale", "norm.weight", (d,), (d,))
    if not cfg.tie_word_embeddings:
        add("lm_head/kernel", "lm_head.weight", (d, v), (v, d), transpose=True, prefixed=False)
    return out


def _base_prefix(cfg: TransformerConfig) -> str:
    return "transformer." if cfg.is_gpt2 else "model."


# ------------------------------------------------------------------------------------- loading
def _read_config_json(path: Path) -> dict:
    if not path.exists():
        raise CheckpointFormatError(f"{path}: model directory does not exist")
    if not path.is_dir():
        raise CheckpointFormatError(f"{path}: is a file; expected a Hugging Face model "
                                    "directory (config.json + model.safetensors)")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointFormatError(f"{path}: no config.json; expected a Hugging Face model "
                                    "directory (config.json + model.safetensors)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointFormatError(f"{cfg_file}: not valid JSON ({e})") from e
    if cfg.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedConfigError(f"{cfg_file}: model_type={cfg.get('model_type')!r} is not "
                                     f"supported; expected one of {SUPPORTED_MODEL_TYPES}")
    return cfg


def load_hf_config(path) -> TransformerConfig:
    """Read a directory's config.json into a `TransformerConfig` (defaults filled by transformers)."""
    import transformers

    path = Path(path)
    _read_config_json(path)
    hf_cfg = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    return config_from_hf(hf_cfg)


def _open_weights(path: Path) -> dict[str, SafetensorsFile]:
    """Map every tensor name of the checkpoint to the file that holds it."""
    if (path / SAFE_INDEX).is_file():
        try:
            weight_map = json.loads((path / SAFE_INDEX).read_text())["weight_map"]
            if not (isinstance(weight_map, dict)
                    and all(isinstance(v, str) for v in weight_map.values())):
                raise TypeError("weight_map must map tensor names to file names")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise CorruptCheckpointError(f"{path / SAFE_INDEX}: expected JSON with a "
                                         f"'weight_map' object ({e!r})") from e
        files = {}
        for fname in sorted(set(weight_map.values())):
            if not (path / fname).is_file():
                raise CheckpointFormatError(f"{path / SAFE_INDEX} names {fname}, which is missing")
            files[fname] = SafetensorsFile(path / fname)
        return {name: files[fname] for name, fname in weight_map.items()}
    if (path / SAFE_SINGLE).is_file():
        f = SafetensorsFile(path / SAFE_SINGLE)
        return {name: f for name in f.keys()}
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickled:
        raise CheckpointFormatError(
            f"{path} holds only pickle weights ({', '.join(pickled)}); rlhf_jax never unpickles "
            "files. In an environment you trust, convert them once with: python -c \"from "
            "transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{path}').save_pretrained('{path}')\" "
            "(transformers writes model.safetensors).")
    raise CheckpointFormatError(f"{path}: no {SAFE_SINGLE} or {SAFE_INDEX} found")


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def require_floating(f: SafetensorsFile, name: str) -> None:
    """Refuse tensor `name` of `f` unless it is floating point: weights are never cast from
    integer or boolean tensors (`CheckpointFormatError` naming the file, tensor and dtype)."""
    if not jax.numpy.issubdtype(f.dtype(name), jax.numpy.floating):
        raise CheckpointFormatError(
            f"{f.path}: tensor {name!r} has dtype {f.dtype(name)}; weights must be floating "
            "point (integer or boolean tensors are not cast)")


def load_hf_checkpoint(path, *, shardings: Optional[Any] = None, lm_head: bool = True,
                       **config_overrides) -> tuple[TransformerConfig, dict]:
    """Load a local Hugging Face causal-LM directory into `(config, params)`.

    `params` holds "transformer" (and "lm_head" when the embeddings are untied), cast to
    `config.param_dtype`. `config_overrides` replace config fields (e.g. `param_dtype="bfloat16"`,
    `resid_dropout=0.1`). `shardings`, a pytree of `jax.sharding.Sharding` shaped like `params`,
    places each tensor straight into its sharding (see the module docstring for host memory).
    `lm_head=False` skips an untied LM head (reward models and critics do not use it).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: checkpoint directory does not exist")
    config = load_hf_config(path).replace(**config_overrides)
    tensors = _open_weights(path)
    prefix = _base_prefix(config)
    entries = [e for e in _tensor_map(config) if lm_head or e.path[0] != "lm_head"]
    first = entries[0].name
    if prefix + first not in tensors and first in tensors:
        prefix = ""  # a bare base model (GPT2Model / LlamaModel) without the LM wrapper prefix
    dtype = config.params_dtype
    params: dict = {}
    used = set()
    for entry in entries:
        name = (prefix if entry.prefixed else "") + entry.name
        if name not in tensors:
            raise CheckpointFormatError(
                f"{path}: tensor {name!r} is missing (expected shape {entry.hf}, for parameter "
                f"{'/'.join(entry.path)})")
        f = tensors[name]
        if f.shape(name) != entry.hf:
            raise CheckpointFormatError(
                f"{f.path}: tensor {name!r} has shape {f.shape(name)}; config.json implies "
                f"{entry.hf}")
        require_floating(f, name)
        used.add(name)
        ours = entry.to_ours(f.get(name))
        if shardings is None:
            value = jax.numpy.asarray(np.asarray(ours, dtype=dtype))
        else:
            value = jax.make_array_from_callback(
                entry.ours, _get(shardings, entry.path),
                lambda idx, a=ours: np.ascontiguousarray(a[idx], dtype=dtype))
        _set(params, entry.path, value)
    ignorable = ("lm_head.weight", "attn.bias", "attn.masked_bias", "rotary_emb.inv_freq")
    # (lm_head.weight is also ignorable when tied, or when the caller asked to skip it)
    unused = sorted(n for n in tensors if n not in used and not n.endswith(ignorable))
    if unused:
        log.warning("%s: %d tensors were not used: %s%s", path, len(unused),
                    ", ".join(unused[:8]), " ..." if len(unused) > 8 else "")
    return config, params


def load_tokenizer(path, config: Optional[TransformerConfig] = None):
    """`transformers.AutoTokenizer` from a local directory, checked against the model's vocabulary."""
    import transformers

    path = Path(path)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointFormatError(f"{path}: no usable tokenizer (expected tokenizer.json or "
                                    f"the files of a slow tokenizer): {e}") from e
    if config is not None and len(tok) > config.vocab_size:
        raise CheckpointFormatError(
            f"{path}: the tokenizer has {len(tok)} tokens but the model's vocab_size is "
            f"{config.vocab_size}; token ids would index past the embedding table")
    return tok


# ------------------------------------------------------------------------------------- saving
def host_array(x) -> np.ndarray:
    """A (possibly sharded, multi-host) array as one NumPy array on every process (collective)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def save_hf_checkpoint(path, config: TransformerConfig, params: dict, *, tokenizer=None,
                       dtype: Optional[str] = None, max_shard_bytes: int = 5 * 2**30,
                       overwrite: bool = False) -> Path:
    """Write params + config (+ tokenizer) as a directory `AutoModelForCausalLM` loads.

    Call it on every process of a multi-host run: the parameters are gathered collectively, and
    process 0 writes.

    A model with LoRA adapters is written merged (W + s·A·B, `lora.merge_adapters`): the
    directory is a plain model. Tensors are written in files of at most `max_shard_bytes` (with
    an index when there are several), converted one file at a time. The directory is assembled
    under a temporary name and moved into place, so an existing checkpoint is never left half-overwritten; an existing
    non-empty directory is refused unless `overwrite=True`.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it")
    from rlhf_jax.models.lora import merge_adapters

    config, params = merge_adapters(config, params)
    out_dtype = np.dtype(jax.numpy.dtype(dtype or config.param_dtype))
    prefix = _base_prefix(config)
    entries = _tensor_map(config)
    for entry in entries:
        try:
            leaf = _get(params, entry.path)
        except (KeyError, TypeError):
            raise CheckpointFormatError(f"params has no {'/'.join(entry.path)} (expected shape "
                                        f"{entry.ours})") from None
        if tuple(leaf.shape) != entry.ours:
            raise CheckpointFormatError(f"params {'/'.join(entry.path)} has shape {leaf.shape}; "
                                        f"expected {entry.ours}")
    shards, current, size = [], [], 0
    for entry in entries:
        nbytes = int(np.prod(entry.hf)) * out_dtype.itemsize
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += nbytes
    shards.append(current)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        weight_map, total = {}, 0
        for k, shard in enumerate(shards):
            fname = SAFE_SINGLE if len(shards) == 1 else \
                f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            tensors = {}
            for entry in shard:
                name = (prefix if entry.prefixed else "") + entry.name
                tensors[name] = entry.to_hf(host_array(_get(params, entry.path))).astype(out_dtype)
                weight_map[name] = fname
                total += tensors[name].nbytes
            if jax.process_index() == 0:
                save_safetensors(str(tmp / fname), tensors, metadata={"format": "pt"})
        if jax.process_index() == 0:
            if len(shards) > 1:
                (tmp / SAFE_INDEX).write_text(json.dumps(
                    {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
            config_to_hf(config).save_pretrained(str(tmp))
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
            replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def replace_dir(tmp: Path, path: Path) -> None:
    """Move the finished directory `tmp` to `path`: an existing `path` is moved aside first and
    removed last, so a crash never leaves neither the old nor the new directory."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
