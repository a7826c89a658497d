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

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
           "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
           "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}


class CorruptCheckpointError(ValueError):
    """A weights file is truncated or its header is malformed."""


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
        self.metadata = header.pop("__metadata__", {}) or {}
        self._entries = header
        self._data_start = 8 + n
        data_len = size - self._data_start
        for name, entry in header.items():
            begin, end = entry.get("data_offsets", (0, -1))
            if entry.get("dtype") not in _DTYPES:
                raise CorruptCheckpointError(f"{self.path}: tensor {name!r} has unsupported "
                                             f"dtype {entry.get('dtype')!r}")
            nbytes = int(np.prod(entry["shape"], dtype=np.int64)) * np.dtype(
                _DTYPES[entry["dtype"]]).itemsize
            if not 0 <= begin <= end <= data_len or end - begin != nbytes:
                raise CorruptCheckpointError(
                    f"{self.path}: tensor {name!r} has data_offsets {[begin, end]} that do not fit "
                    f"its shape {entry['shape']} or the file's {data_len} data bytes "
                    "(truncated or corrupt file)")
        self._mmap = None

    def keys(self):
        """Tensor names in the file."""
        return list(self._entries)

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
