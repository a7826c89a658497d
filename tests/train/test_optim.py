"""Optimiser factory: schedule, decay mask, clipping, frozen subtrees (hand-computed references)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax.train import (OptimizerConfig, apply_updates, create_train_state, decay_mask,
                            learning_rate_schedule, make_optimizer, make_train_step)


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
    # frozen: no update even with a gradient (None: kept as is), and no Adam moments for it
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    assert updates["reference"]["dense"]["kernel"] is None
    new = apply_updates(params, updates)
    np.testing.assert_array_equal(new["reference"]["dense"]["kernel"],
                                  params["reference"]["dense"]["kernel"])
    assert not np.allclose(new["backbone"]["dense"]["kernel"],
                           params["backbone"]["dense"]["kernel"])
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


def test_train_step_differentiates_only_trainable_leaves():
    """With a freeze rule the step takes no gradient of frozen leaves, leaves them bitwise
    unchanged, and moves the trainable ones exactly as an optimiser over those leaves alone."""
    params = _params()
    cfg = OptimizerConfig(learning_rate=0.1, total_steps=10, schedule="constant", clip_norm=0.5)
    tx = make_optimizer(cfg, params, freeze=lambda path: path.startswith("backbone/wte"))
    x = jnp.arange(4.0)

    def loss(p, batch, rng):
        h = p["backbone"]["wte"]["embedding"].sum() + p["backbone"]["dense"]["kernel"].sum()
        total = jnp.sum((h * batch - 1.0) ** 2) + p["reference"]["dense"]["kernel"].sum() ** 2
        return total, (jnp.float32(batch.shape[0]), {})
    state = create_train_state(params, tx, 0)
    new, metrics = jax.jit(make_train_step(loss, tx))(state, x)
    np.testing.assert_array_equal(new.params["backbone"]["wte"]["embedding"],
                                  params["backbone"]["wte"]["embedding"])
    # reference: plain optax over the trainable leaves with the frozen one a constant
    frozen = params["backbone"]["wte"]["embedding"]
    trainable = {"backbone": {k: v for k, v in params["backbone"].items() if k != "wte"},
                 "reference": params["reference"]}

    def ref_loss(t):
        p = {"backbone": {**t["backbone"], "wte": {"embedding": frozen}},
             "reference": t["reference"]}
        return loss(p, x, None)[0] / x.shape[0]
    g = jax.grad(ref_loss)(trainable)
    inner = optax.chain(optax.clip_by_global_norm(0.5),
                        optax.adamw(0.1, weight_decay=0.0, mask=decay_mask))  # the reference
    upd, _ = inner.update(g, inner.init(trainable), trainable)
    expect = optax.apply_updates(trainable, upd)
    np.testing.assert_allclose(new.params["backbone"]["dense"]["kernel"],
                               expect["backbone"]["dense"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(new.params["reference"]["dense"]["kernel"],
                               expect["reference"]["dense"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(metrics["train/grad_norm"], optax.tree_utils.tree_norm(g),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="every parameter is frozen"):
        make_optimizer(cfg, params, freeze=lambda path: True)


def test_optimizer_state_layout_is_unchanged_for_runs_without_frozen_leaves():
    """The state of an optimiser that freezes nothing has the tree layout this module built
    before frozen leaves were dropped from it (multi_transform over trainable/frozen), so
    checkpoints written then still restore."""
    params = _params()
    cfg = OptimizerConfig(total_steps=10)
    labels = jax.tree.map(lambda _: "trainable", params)
    old = optax.multi_transform(
        {"trainable": optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                                  optax.adamw(learning_rate_schedule(cfg), weight_decay=0.0,
                                              mask=decay_mask)),
         "frozen": optax.set_to_zero()}, labels)
    assert jax.tree.structure(make_optimizer(cfg, params).init(params)) == \
        jax.tree.structure(old.init(params))
