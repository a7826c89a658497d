"""The studies' config dataclasses, in modules that import no JAX (see `stages.configs`)."""
