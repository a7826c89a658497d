"""Meshes, rule presets and sharded forwards on 8 fake CPU devices (see tests/conftest.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import (DecoderModel, init_params, load_hf_checkpoint, logical_axes, preset,
                             save_hf_checkpoint)
from rlhf_jax.sharding import (activation_sharding, logical_rules, make_mesh, param_shardings,
                               parse_mesh_spec, shard_batch, shard_params)


def test_eight_fake_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize("spec,expected", [
    ("data=2,fsdp=2,tensor=2", {"data": 2, "fsdp": 2, "tensor": 2}),
    ("fsdp=-1,tensor=2", {"data": 1, "fsdp": 4, "tensor": 2}),
    ("data=-1", {"data": 8, "fsdp": 1, "tensor": 1}),
    ({"tensor": 8}, {"data": 1, "fsdp": 1, "tensor": 8}),
])
def test_parse_mesh_spec(spec, expected):
    assert parse_mesh_spec(spec, 8) == expected


@pytest.mark.parametrize("spec,match", [
    ("data=3", "asks for 3 devices"), ("data=-1,fsdp=-1", "only one axis may be -1"),
    ("pipeline=2", "unknown axes"), ("data=two", "not an integer"), ("fsdp=3,data=-1", "cannot"),
    ("data", "not of the form"),
])
def test_bad_mesh_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_mesh_spec(spec, 8)


# (preset, mesh spec, {param path: expected per-device shard shape}) for tiny-llama:
# hidden 64, 4 heads, 2 kv heads, head_dim 16, mlp 128, vocab 256.
CASES = [
    ("dp", "data=8", {"block_0/attn/q/kernel": (64, 4, 16), "block_0/mlp/up/kernel": (64, 128)}),
    ("fsdp", "data=2,fsdp=4", {"block_0/attn/q/kernel": (16, 4, 16),
                               "block_0/mlp/up/kernel": (16, 128),
                               "block_0/mlp/down/kernel": (128, 16),
                               "wte/embedding": (256, 16)}),
    ("fsdp_tp", "data=2,fsdp=2,tensor=2", {"block_0/attn/q/kernel": (32, 2, 16),
                                           "block_0/attn/k/kernel": (32, 1, 16),
                                           "block_0/attn/out/kernel": (2, 16, 32),
                                           "block_0/mlp/up/kernel": (32, 64),
                                           "block_0/mlp/down/kernel": (64, 32),
                                           "wte/embedding": (128, 32)}),
]


@pytest.fixture(scope="module")
def llama():
    model = DecoderModel(preset("tiny-llama"), heads=("lm", "value"))
    params = init_params(model, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (8, 12), 0, 256)
    mask = jnp.ones((8, 12), jnp.int32).at[0, :5].set(0).at[3, :2].set(0)
    ref = jax.jit(model.apply)({"params": params}, tokens, mask)
    return model, params, tokens, mask, ref


@pytest.mark.parametrize("preset_name,spec,shards", CASES)
def test_sharded_forward_equals_single_device(llama, preset_name, spec, shards):
    model, params, tokens, mask, ref = llama
    mesh, rules = make_mesh(spec), logical_rules(preset_name)
    sharded = shard_params(params, logical_axes(model), mesh, rules)
    for path, shape in shards.items():
        leaf = sharded["transformer"]
        for key in path.split("/"):
            leaf = leaf[key]
        assert {s.data.shape for s in leaf.addressable_shards} == {shape}, path
    batch = shard_batch({"tokens": tokens, "mask": mask}, mesh, rules)
    assert batch["tokens"].addressable_shards[0].data.shape[0] == 8 // (
        mesh.shape["data"] * mesh.shape["fsdp"])
    with activation_sharding(mesh, rules):
        out = jax.jit(model.apply)({"params": sharded}, batch["tokens"], batch["mask"])
    np.testing.assert_allclose(out.logits, ref.logits, atol=2e-5)
    np.testing.assert_allclose(out.values, ref.values, atol=2e-5)


def test_indivisible_dimension_replicated():
    model = DecoderModel(preset("tiny-gpt2", vocab_size=257))
    params = init_params(model, jax.random.key(0))
    mesh = make_mesh("fsdp=4,tensor=2")
    shardings = param_shardings(params, logical_axes(model), mesh, logical_rules("fsdp_tp"))
    assert tuple(shardings["transformer"]["wte"]["embedding"].spec) == (None, "fsdp")
    assert tuple(shardings["transformer"]["block_0"]["attn"]["qkv"]["kernel"].spec) == (
        "fsdp", None, "tensor", None)


def test_batch_must_divide():
    with pytest.raises(ValueError, match="batch size 6 is not divisible by the 8 devices"):
        shard_batch(jnp.zeros((6, 3)), make_mesh("data=8"), logical_rules("dp"))


def test_load_checkpoint_straight_into_shardings(tmp_path):
    cfg = preset("tiny-llama")
    model = DecoderModel(cfg)
    params = init_params(model, jax.random.key(0))
    path = save_hf_checkpoint(tmp_path / "ckpt", cfg, params)
    mesh, rules = make_mesh("data=2,fsdp=2,tensor=2"), logical_rules("fsdp_tp")
    shardings = param_shardings(params, logical_axes(model), mesh, rules)
    _, loaded = load_hf_checkpoint(path, shardings=shardings)
    for a, b, s in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), jax.tree.leaves(shardings)):
        assert a.sharding == s
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    q = loaded["transformer"]["block_0"]["attn"]["q"]["kernel"]
    assert q.addressable_shards[0].data.shape == (32, 2, 16)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown sharding preset 'tp'"):
        logical_rules("tp")
