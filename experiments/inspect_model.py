"""Load a Hugging Face checkpoint (or the built-in tiny default), shard it, run a forward pass.

    python experiments/inspect_model.py [--config experiments/configs/inspect_model.py]
        [--config.model_dir=/path/to/hf_dir] [--config.mesh=data=2,fsdp=2,tensor=2]
"""
import os
import sys
import time

from rlhf_jax import train
from rlhf_jax.train.config_help import config_file_help

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "inspect_model.py")


def main(argv):
    if "--help" in argv or "-h" in argv:
        print(f"{__doc__.strip()}\n\nOverride any key with --config.KEY=VALUE (defaults from "
              f"{DEFAULT}):\n\n" + "\n".join(config_file_help(DEFAULT)))
        raise SystemExit(0)
    try:
        cfg = train.parse_config(argv, DEFAULT)
    except train.ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    run(cfg)


def run(cfg):
    """Load or build the model, shard it, time a forward pass (JAX is imported here, after the
    config is read)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rlhf_jax import losses, sharding
    from rlhf_jax.models import load_or_init_model

    mesh, rules = sharding.make_mesh(cfg.mesh), sharding.logical_rules(cfg.sharding)
    config, model, params = load_or_init_model(
        cfg.model_dir, cfg.preset, mesh, rules, jax.random.key(cfg.seed), dtype=cfg.dtype,
        param_dtype=cfg.param_dtype)
    source = cfg.model_dir or f"preset {cfg.preset} (random init)"
    n_params = sum(x.size for x in jax.tree.leaves(params))
    per_device = max(sum(s.data.nbytes for x in jax.tree.leaves(params)
                         for s in x.addressable_shards if s.device == d) for d in mesh.devices.flat)
    print(f"model: {config.model_type} from {source}: {n_params / 1e6:.2f}M parameters, "
          f"{config.num_layers} layers, {config.num_heads} heads / {config.num_kv_heads} kv heads")
    print(f"mesh: {dict(mesh.shape)} rules={cfg.sharding}; largest per-device parameter bytes: "
          f"{per_device / 2**20:.1f} MiB")

    rng = np.random.default_rng(cfg.seed)
    tokens = rng.integers(0, config.vocab_size, (cfg.batch_size, cfg.length), dtype=np.int32)
    mask = np.ones_like(tokens)
    mask[0, : cfg.length // 2] = 0  # one left-padded row
    batch = sharding.shard_batch({"tokens": tokens, "mask": mask}, mesh, rules)

    @jax.jit
    def next_token_nll(params, tokens, mask):
        logits = model.apply({"params": params}, tokens, mask).logits
        # a target is a real token that follows a real token
        total, count = losses.next_token_nll_sum(logits, tokens, losses.next_token_targets(mask))
        return total / jnp.maximum(count, 1)

    with sharding.activation_sharding(mesh, rules):
        nll = float(next_token_nll(params, batch["tokens"], batch["mask"]))  # compile + run
        start = time.perf_counter()
        nll = float(next_token_nll(params, batch["tokens"], batch["mask"]))
        seconds = time.perf_counter() - start
    print(f"forward: batch {tokens.shape}, next-token NLL {nll:.4f} "
          f"(uniform would be {np.log(config.vocab_size):.4f}), "
          f"{tokens.size / seconds:,.0f} tokens/s on {jax.device_count()} {jax.default_backend()} "
          "device(s)")


if __name__ == "__main__":
    main(sys.argv[1:])
