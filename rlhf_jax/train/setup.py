"""Run setup shared by the entry scripts: models from a directory or preset, sharded state."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax

from rlhf_jax import models, sharding
from rlhf_jax.train.optim import path_str


def load_or_init_model(model_dir: str, preset_name: str, mesh, rules, key, *,
                       heads: Sequence[str] = ("lm",), num_reward_outputs: int = 1,
                       **overrides):
    """(config, model, params): from a local Hugging Face directory, else a random preset.

    Parameters are created directly in their shardings. From a checkpoint, only the heads it
    lacks (value, reward) are randomly initialised: the unused part of the jitted init is dropped
    by the compiler, so the backbone never exists twice.
    """
    config = (models.load_hf_config(model_dir) if model_dir else
              models.preset(preset_name)).replace(**overrides)
    model = models.DecoderModel(config, heads=tuple(heads), num_reward_outputs=num_reward_outputs)
    abstract = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
    shardings = sharding.param_shardings(abstract, models.logical_axes(model), mesh, rules)
    loaded = {}
    if model_dir:
        _, loaded = models.load_hf_checkpoint(
            model_dir, lm_head="lm" in heads,
            shardings={k: shardings[k] for k in ("transformer", "lm_head") if k in shardings},
            **overrides)
    fresh = {k: s for k, s in shardings.items() if k not in loaded}
    params = jax.jit(lambda k: {name: p for name, p in models.init_params(model, k).items()
                                if name in fresh}, out_shardings=fresh)(key)
    return config, model, {**params, **loaded}


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
