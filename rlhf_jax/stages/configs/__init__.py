"""The stages' config dataclasses, in modules that import no JAX: the entry scripts parse,
check and explain (`--help`) a config before any stage runs."""
