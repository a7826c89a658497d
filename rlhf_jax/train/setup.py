"""Sharded train-state creation without materialising it, and parameter leaf names."""
from __future__ import annotations

from typing import Any, Callable

import jax

from rlhf_jax.train.optim import path_str


def compile_init(fn: Callable, *args) -> tuple[Any, Callable[[], Any]]:
    """Compile `fn(*args)`; return its abstract output (with shardings) and a thunk that runs it.

    The abstract output is the restore target for a checkpoint: nothing is materialised unless the
    thunk is called (i.e. when there is no checkpoint to resume from).
    """
    compiled = jax.jit(fn).lower(*args).compile()
    shapes = jax.eval_shape(fn, *args)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, compiled.output_shardings)
    return abstract, lambda: compiled(*args)


def leaf_names(tree: Any) -> list[str]:
    """'/'-joined paths of a pytree's leaves, in leaf order."""
    return [path_str(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
