"""Minimal safetensors reader/writer over numpy memory maps (bfloat16 through ml_dtypes).

The `safetensors` package's numpy backend cannot represent bfloat16 and its flax backend puts
every tensor on the default device; reading the (documented, pickle-free) format ourselves lets a
loader touch only the slices each device needs. Format: 8-byte little-endian header length, a JSON
header {name: {dtype, shape, data_offsets}}, then the raw little-endian tensor bytes.
"""
from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

from rlhf_jax.models.errors import CorruptCheckpointError

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
           "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
           "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_header(path: str, header, data_len: int) -> None:
    """Refuse a header that does not follow the format, naming the file and the tensor."""
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: header must be a JSON object of tensors, got "
                                     f"{type(header).__name__}")
    meta = header.get("__metadata__", {})
    if meta is not None and not (isinstance(meta, dict)
                                 and all(isinstance(v, str) for v in meta.values())):
        raise CorruptCheckpointError(f"{path}: __metadata__ must be an object of strings")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name!r}"
        if not isinstance(entry, dict):
            raise CorruptCheckpointError(f"{where}: expected an object with dtype, shape and "
                                         f"data_offsets, got {type(entry).__name__}")
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
        if missing:
            raise CorruptCheckpointError(f"{where}: missing {', '.join(missing)}")
        if entry["dtype"] not in _DTYPES:
            raise CorruptCheckpointError(f"{where}: unsupported dtype {entry['dtype']!r} "
                                         f"(expected one of {', '.join(_DTYPES)})")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
            raise CorruptCheckpointError(f"{where}: shape {shape!r} is not a list of "
                                         "non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
            raise CorruptCheckpointError(f"{where}: data_offsets {offsets!r} is not a list of two "
                                         "integers")
        begin, end = offsets
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[entry["dtype"]]).itemsize
        if not 0 <= begin <= end <= data_len or end - begin != nbytes:
            raise CorruptCheckpointError(
                f"{where}: data_offsets {offsets} do not fit its shape {shape} or the file's "
                f"{data_len} data bytes (truncated or corrupt file)")


class SafetensorsFile:
    """Lazy access to the tensors of one .safetensors file (memory-mapped, nothing copied)."""

    def __init__(self, path: str):
        self.path = str(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CorruptCheckpointError(f"{self.path}: file is {size} bytes, too short for a "
                                             "safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise CorruptCheckpointError(f"{self.path}: header length {n} exceeds the file "
                                             f"size {size} (truncated file?)")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CorruptCheckpointError(f"{self.path}: header is not valid JSON ({e})") from e
        _check_header(self.path, header, size - 8 - n)
        self.metadata = header.pop("__metadata__", {}) or {}
        self._entries = header
        self._data_start = 8 + n
        self._mmap = None

    def keys(self):
        """Tensor names in the file."""
        return list(self._entries)

    def dtype(self, name: str) -> np.dtype:
        """NumPy dtype of a tensor, without reading it."""
        return np.dtype(_DTYPES[self._entries[name]["dtype"]])

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of a tensor, without reading it."""
        return tuple(self._entries[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        """A read-only memory-mapped view of a tensor."""
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        entry = self._entries[name]
        begin, end = entry["data_offsets"]
        raw = self._mmap[self._data_start + begin:self._data_start + end]
        return raw.view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])


def save_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict | None = None):
    """Write `tensors` to `path` atomically (written to a temporary name, then renamed)."""
    header, offset = {}, 0
    arrays = {}
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype not in _CODES:
            raise TypeError(f"tensor {name!r}: dtype {arr.dtype} cannot be saved to safetensors")
        header[name] = {"dtype": _CODES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        arrays[name] = arr
        offset += arr.nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data section to 8 bytes
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays.values():
            f.write(arr.tobytes())
    os.replace(tmp, path)
