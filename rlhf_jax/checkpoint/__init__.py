"""Orbax checkpoint manager: save/restore with resume, keep-N/best-N and corrupt-step fallback."""
from rlhf_jax.checkpoint.manager import (CheckpointConfig, Checkpointer, NoReadableCheckpointError,
                                         Restored)
