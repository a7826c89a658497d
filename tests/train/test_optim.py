"""Optimiser factory: schedule, decay mask, clipping, frozen subtrees (hand-computed references)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax.train import OptimizerConfig, decay_mask, learning_rate_schedule, make_optimizer


def test_schedule_by_hand():
    cos = learning_rate_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=10,
                                                 total_steps=110, schedule="cosine"))
    assert float(cos(0)) == 0.0 and float(cos(5)) == pytest.approx(0.5)
    assert float(cos(10)) == pytest.approx(1.0)
    assert float(cos(60)) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.5)), abs=1e-6)
    assert float(cos(110)) == pytest.approx(0.0, abs=1e-6)
    lin = learning_rate_schedule(OptimizerConfig(learning_rate=2.0, total_steps=100,
                                                 schedule="linear", end_lr_fraction=0.5))
    assert float(lin(50)) == pytest.approx(1.5) and float(lin(100)) == pytest.approx(1.0)
    const = learning_rate_schedule(OptimizerConfig(learning_rate=3.0, warmup_steps=4,
                                                   schedule="constant"))
    assert float(const(2)) == pytest.approx(1.5) and float(const(500)) == pytest.approx(3.0)


def _params():
    return {"backbone": {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))},
                         "norm": {"scale": jnp.ones((4,))}, "wte": {"embedding": jnp.ones((5, 3))}},
            "reference": {"dense": {"kernel": jnp.ones((3, 4))}}}


def test_decay_mask_skips_norms_and_biases():
    mask = decay_mask(_params())
    assert mask["backbone"]["dense"] == {"kernel": True, "bias": False}
    assert mask["backbone"]["norm"]["scale"] is False
    assert mask["backbone"]["wte"]["embedding"] is True


def test_weight_decay_only_where_masked_and_frozen_untouched():
    params = _params()
    cfg = OptimizerConfig(learning_rate=0.1, weight_decay=0.5, total_steps=10, schedule="constant",
                          frozen=("reference",))
    tx = make_optimizer(cfg, params)
    state = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, state, params)
    # AdamW with zero gradient: the update is −lr · wd · p on decayed leaves, 0 elsewhere.
    np.testing.assert_allclose(updates["backbone"]["dense"]["kernel"], -0.05)
    np.testing.assert_allclose(updates["backbone"]["dense"]["bias"], 0.0)
    np.testing.assert_allclose(updates["backbone"]["norm"]["scale"], 0.0)
    # frozen: zero update even with a gradient, and no Adam moments held for it
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    np.testing.assert_array_equal(updates["reference"]["dense"]["kernel"], 0.0)
    trainable = sum(x.size for x in jax.tree.leaves(params["backbone"]))
    mu_sizes = sum(leaf.size for _, mu in optax.tree_utils.tree_get_all_with_path(state, "mu")
                   for leaf in jax.tree.leaves(mu))
    assert mu_sizes == trainable > 0


def test_global_norm_clipping():
    params = {"w": {"kernel": jnp.zeros((2, 2))}}
    tx = make_optimizer(OptimizerConfig(learning_rate=0.1, clip_norm=1.0, b1=0.9,
                                        total_steps=10), params)
    state = tx.init(params)
    grads = {"w": {"kernel": jnp.full((2, 2), 10.0)}}  # norm 20
    _, state = tx.update(grads, state, params)
    mu = optax.tree_utils.tree_get(state, "mu")
    np.testing.assert_allclose(mu["w"]["kernel"], 0.1 * 10.0 / 20.0, rtol=1e-6)


@pytest.mark.parametrize("kw,match", [(dict(schedule="step"), "schedule='step'"),
                                      (dict(warmup_steps=20, total_steps=10), "warmup_steps"),
                                      (dict(learning_rate=-1.0), "learning_rate")])
def test_bad_optimizer_config(kw, match):
    with pytest.raises(ValueError, match=match):
        OptimizerConfig(**kw)


def test_frozen_prefix_must_match():
    with pytest.raises(ValueError, match="match no parameter path"):
        make_optimizer(OptimizerConfig(frozen=("policy",)), _params())
