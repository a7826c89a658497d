"""Device meshes and logical-axis sharding rules (the only place that knows device layout)."""
from rlhf_jax.sharding.mesh import MESH_AXES, make_mesh, parse_mesh_spec
from rlhf_jax.sharding.rules import (RULE_PRESETS, activation_sharding, batch_sharding,
                                     logical_rules, param_shardings, shard_batch, shard_params)
