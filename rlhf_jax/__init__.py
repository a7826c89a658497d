"""rlhf_jax: reinforcement learning from human feedback in JAX/Flax."""
import os as _os

# We use transformers for tokenizers and config files only; without PyTorch it would advise at
# import that "models won't be available", which is true and irrelevant here.
_os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

__version__ = "0.1.0"
