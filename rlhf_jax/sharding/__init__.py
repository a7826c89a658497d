"""Device meshes and logical-axis sharding rules (the only place that knows device layout)."""
from rlhf_jax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "mesh": ("MESH_AXES", "make_mesh", "parse_mesh_spec",),
    "rules": (
        "RULE_PRESETS", "activation_sharding", "batch_sharding", "logical_rules",
        "param_shardings", "shard_batch", "shard_params",
    ),
})
