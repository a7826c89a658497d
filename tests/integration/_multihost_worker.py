"""One process of a multi-host run (or the single-process reference): a few sharded train steps.

argv: process_id num_processes port devices_per_process out.npz

The mesh is `fsdp=2` over two devices in all: parameters are sharded across the two devices (one
per process in the two-process run) and so is the batch. Every cross-device reduction therefore
adds exactly two partial results, and a + b is the same float32 number in either order, so the
two-process run must reproduce the one-process run bit for bit.
"""
import os
import sys

pid, nproc, port, ndev, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], \
    sys.argv[5]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ndev}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from rlhf_jax import losses, sharding, train  # noqa: E402
from rlhf_jax.models import load_or_init_model  # noqa: E402
from rlhf_jax.train import compile_init, leaf_names  # noqa: E402

if nproc > 1:
    train.initialize(f"127.0.0.1:{port}", nproc, pid)
assert jax.device_count() == 2, jax.device_count()
mesh, rules = sharding.make_mesh("fsdp=2"), sharding.logical_rules("fsdp")
config, model, params = load_or_init_model("", "tiny-llama", mesh, rules, jax.random.key(0))
tx = train.make_optimizer(train.OptimizerConfig(learning_rate=1e-2, total_steps=10), params)
abstract, init = compile_init(lambda p: train.create_train_state(p, tx, 1), params)
state = init()
initial = multihost_utils.process_allgather(state.params, tiled=True)


def sum_loss(p, batch, key):
    logits = model.apply({"params": p}, batch["tokens"], batch["mask"]).logits
    total, count = losses.next_token_nll_sum(logits, batch["tokens"], batch["mask"])
    return total, (count, {})


state_sh = jax.tree.map(lambda a: a.sharding, abstract)
step = jax.jit(train.make_train_step(sum_loss, tx), in_shardings=(
    state_sh, sharding.batch_sharding(mesh, rules)), out_shardings=(state_sh, None),
    donate_argnums=0)
rng = np.random.default_rng(0)
with sharding.activation_sharding(mesh, rules):
    for i in range(3):
        tokens = rng.integers(0, config.vocab_size, (8, 12), dtype=np.int32)
        rows = train.process_slice(8)  # each process loads only its rows
        batch = train.global_batch_from_local(
            {"tokens": tokens[rows], "mask": np.ones_like(tokens[rows])}, mesh, rules)
        state, metrics = step(state, batch)
params = multihost_utils.process_allgather(state.params, tiled=True)
if train.is_main_process():
    flat = {}
    for prefix, tree in (("final", params), ("initial", initial)):
        for name, v in zip(leaf_names(tree), jax.tree.leaves(tree)):
            flat[f"{prefix}/{name}"] = np.asarray(v)
    np.savez(out, **flat)
print(f"process {pid} done, loss {float(metrics['train/loss']):.4f}", flush=True)
