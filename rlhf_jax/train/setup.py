"""Run setup shared by the entry scripts: models from a directory or preset, sharded state."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax

from rlhf_jax import models, sharding


def load_or_init_model(model_dir: str, preset_name: str, mesh, rules, key, *,
                       heads: Sequence[str] = ("lm",), num_reward_outputs: int = 1,
                       **overrides):
    """(config, model, params): from a local Hugging Face directory, else a random preset.

    Parameters are created directly in their shardings. Heads missing from a checkpoint (value,
    reward) are randomly initialised.
    """
    if model_dir:
        config = models.load_hf_config(model_dir).replace(**overrides) if overrides else \
            models.load_hf_config(model_dir)
    else:
        config = models.preset(preset_name, **overrides)
    model = models.DecoderModel(config, heads=tuple(heads), num_reward_outputs=num_reward_outputs)
    abstract = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
    shardings = sharding.param_shardings(abstract, models.logical_axes(model), mesh, rules)
    params = jax.jit(models.init_params, static_argnums=0, out_shardings=shardings)(model, key)
    if model_dir:
        _, loaded = models.load_hf_checkpoint(
            model_dir, shardings={k: shardings[k] for k in ("transformer", "lm_head")
                                  if k in shardings}, **overrides)
        params = {**params, **loaded}
    return config, model, params


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
    return ["/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
