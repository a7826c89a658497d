"""Logical-axis rules: the only map from the models' axis names to mesh axes.

Parameter axes: vocab, embed, position, heads, kv_heads, head_dim, qkv, mlp, norm, head_out.
Activation axes: batch, length, act_embed, act_heads, act_kv_heads, act_mlp, act_vocab.
A name without a rule is replicated.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec

_BATCH = ("batch", ("data", "fsdp"))
_TENSOR = (("heads", "tensor"), ("kv_heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"),
           ("act_heads", "tensor"), ("act_kv_heads", "tensor"), ("act_mlp", "tensor"),
           ("act_vocab", "tensor"))

RULE_PRESETS: dict[str, tuple] = {
    # Parameters replicated; the batch is split over every data-like axis.
    "dp": (_BATCH,),
    # ZeRO-3 style (Rajbhandari et al. 2020): parameters split along the model width over fsdp.
    "fsdp": (_BATCH, ("embed", "fsdp")),
    # FSDP plus Megatron tensor parallelism (Shoeybi et al. 2019): heads / MLP / vocab over tensor.
    "fsdp_tp": (_BATCH, ("embed", "fsdp")) + _TENSOR,
}


def logical_rules(preset: str = "fsdp") -> tuple:
    """The (logical name, mesh axes) pairs of a preset: "dp", "fsdp" or "fsdp_tp"."""
    if preset not in RULE_PRESETS:
        raise ValueError(f"unknown sharding preset {preset!r}; expected one of "
                         f"{sorted(RULE_PRESETS)}")
    return RULE_PRESETS[preset]


def _axes_size(mesh: jax.sharding.Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def _fit(shape, spec: PartitionSpec, mesh) -> PartitionSpec:
    """Replicate any dimension that the mesh axes do not divide evenly (e.g. a 50257 vocab)."""
    entries = tuple(spec) + (None,) * (len(shape) - len(spec))
    return PartitionSpec(*(axes if dim % _axes_size(mesh, axes) == 0 else None
                           for dim, axes in zip(shape, entries)))


def param_shardings(params: Any, logical_specs: Any, mesh: jax.sharding.Mesh,
                    rules: tuple) -> Any:
    """`NamedSharding`s for a params pytree (arrays or `ShapeDtypeStruct`s) from logical specs."""
    leaves, treedef = jax.tree.flatten(params)
    specs = jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    if len(specs) != len(leaves):
        raise ValueError(f"logical_specs has {len(specs)} entries but params has {len(leaves)}; "
                         "were they made for the same model and heads?")
    out = [NamedSharding(mesh, _fit(x.shape, nn.logical_to_mesh_axes(spec, rules), mesh))
           for x, spec in zip(leaves, specs)]
    return jax.tree.unflatten(treedef, out)


def shard_params(params: Any, logical_specs: Any, mesh: jax.sharding.Mesh, rules: tuple) -> Any:
    """Move a params pytree into the shardings that `rules` give on `mesh`."""
    return jax.device_put(params, param_shardings(params, logical_specs, mesh, rules))


def batch_sharding(mesh: jax.sharding.Mesh, rules: tuple, ndim: int = 2) -> NamedSharding:
    """Sharding of an array whose leading axis is the batch (the rest replicated)."""
    spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
    return NamedSharding(mesh, spec)


def shard_batch(batch: Any, mesh: jax.sharding.Mesh, rules: tuple) -> Any:
    """Split every array of a batch pytree along its leading (batch) axis."""
    def put(x):
        sharding = batch_sharding(mesh, rules, x.ndim)
        n = _axes_size(mesh, sharding.spec[0])
        if x.shape[0] % n:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by the {n} devices of "
                             f"the batch axes {sharding.spec[0]}")
        return jax.device_put(x, sharding)
    return jax.tree.map(put, batch)


@contextlib.contextmanager
def activation_sharding(mesh: jax.sharding.Mesh, rules: tuple):
    """Context in which the models' activation constraints map to `mesh` (wrap jit tracing)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
