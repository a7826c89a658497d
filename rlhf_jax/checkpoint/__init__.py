"""Orbax checkpoint manager: save/restore with resume, keep-N/best-N, integrity manifests and
damaged-step fallback."""
from rlhf_jax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "config": ("CheckpointConfig", "DamagedCheckpointError", "NoReadableCheckpointError",),
    "manager": ("Checkpointer", "Restored", "seal_step", "verify_step",),
})
