"""Orbax checkpoint manager: save/restore with resume, keep-N/best-N, integrity manifests and
damaged-step fallback."""
from rlhf_jax.checkpoint.manager import (CheckpointConfig, Checkpointer, DamagedCheckpointError,
                                         NoReadableCheckpointError, Restored, seal_step,
                                         verify_step)
