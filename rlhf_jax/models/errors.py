"""What a checkpoint directory can be wrong with (importable without JAX)."""
from __future__ import annotations


class CheckpointFormatError(ValueError):
    """A checkpoint directory is missing files, holds the wrong tensors, or uses pickle."""


class CorruptCheckpointError(ValueError):
    """A weights file is truncated or its header is malformed."""
