"""Packages whose names load on first use (PEP 562), so that importing a light module — a config
class, an error type — does not import JAX, TensorFlow Datasets or Orbax behind it: the entry
scripts answer `--help` and report a config mistake without them."""
from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]):
    """`(__getattr__, __dir__, __all__)` for `package`: each name of `exports[submodule]` is
    imported from `package.submodule` when first read (then kept in the package), and any other
    attribute is tried as a submodule."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name in where:
            module = where[name]
            module = module if module.startswith("rlhf_jax.") else f"{package}.{module}"
            value = getattr(importlib.import_module(module), name)
        else:
            try:
                value = importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return sorted(set(where) | set(vars(sys.modules[package])))

    return __getattr__, __dir__, sorted(where)
