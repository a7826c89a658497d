"""Train step: exact gradient accumulation, non-finite protection, the LM loss reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.losses import next_token_nll_sum
from rlhf_jax.train import (NonFiniteError, OptimizerConfig, accumulate_gradients,
                            create_train_state, make_optimizer, make_train_step, run_training)


def test_next_token_nll_against_float64_loop():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    tokens = rng.integers(0, 7, size=(2, 5))
    mask = np.array([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    total, count = next_token_nll_sum(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask))
    ref_total, ref_count = 0.0, 0
    for b in range(2):
        for t in range(1, 5):
            if mask[b, t]:
                z = logits[b, t - 1].astype(np.float64)
                ref_total += -(z[tokens[b, t]] - np.log(np.exp(z - z.max()).sum()) - z.max())
                ref_count += 1
    assert float(count) == ref_count
    assert float(total) == pytest.approx(ref_total, rel=1e-6)


def _masked_regression(params, batch, key):
    err = (batch["x"] @ params["w"] - batch["y"]) ** 2  # [B, T]
    return jnp.sum(err * batch["m"]), (jnp.sum(batch["m"]), {"sq": jnp.sum(err * batch["m"])})


def _data():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(8, 6, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
    m = np.zeros((8, 6), np.float32)
    for b, n in enumerate([6, 1, 2, 6, 3, 1, 5, 4]):  # very unequal tokens per row
        m[b, :n] = 1
    return {"w": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}, {"x": x, "y": y,
                                                                    "m": jnp.asarray(m)}


def test_accumulation_equals_full_batch_masked_mean():
    params, batch = _data()
    full_loss, full_g, full_m, count = accumulate_gradients(_masked_regression, params, batch,
                                                            jax.random.key(0), 1)
    acc_loss, acc_g, acc_m, acc_count = jax.jit(
        accumulate_gradients, static_argnums=(0, 4))(_masked_regression, params, batch,
                                                     jax.random.key(0), 4)
    np.testing.assert_allclose(acc_g["w"], full_g["w"], rtol=1e-5)
    assert float(acc_loss) == pytest.approx(float(full_loss), rel=1e-6)
    assert float(acc_count) == float(count) == 28
    np.testing.assert_allclose(acc_m["sq"], full_m["sq"], rtol=1e-6)
    # the naive mean of per-micro-batch means is different here (could-be-false check)
    naive = np.mean([float(accumulate_gradients(
        _masked_regression, params, jax.tree.map(lambda a: a[i * 2:(i + 1) * 2], batch),
        jax.random.key(0), 1)[0]) for i in range(4)])
    assert abs(naive - float(full_loss)) > 1e-3


def _nan_when_flagged(params, batch, key):
    loss, aux = _masked_regression(params, batch, key)
    return jnp.where(batch["bad"][0] > 0, jnp.nan, loss), aux


def test_nonfinite_step_is_skipped():
    params, batch = _data()
    tx = make_optimizer(OptimizerConfig(learning_rate=0.1, total_steps=10), params)
    state = create_train_state(params, tx, 0)
    step = jax.jit(make_train_step(_nan_when_flagged, tx))
    good = dict(batch, bad=jnp.zeros((8,)))
    bad = dict(batch, bad=jnp.ones((8,)))
    s1, m1 = step(state, bad)
    np.testing.assert_array_equal(s1.params["w"], params["w"])
    assert int(s1.skipped) == 1 and int(s1.consecutive_skips) == 1 and int(s1.step) == 1
    assert not bool(m1["train/loss_finite"]) and float(m1["train/skipped"]) == 1
    for a, b in zip(jax.tree.leaves(s1.opt_state), jax.tree.leaves(state.opt_state)):
        np.testing.assert_array_equal(a, b)
    s2, _ = step(s1, bad)
    assert int(s2.consecutive_skips) == 2
    s3, m3 = step(s2, good)
    assert int(s3.consecutive_skips) == 0 and int(s3.skipped) == 2
    assert not np.array_equal(s3.params["w"], params["w"])


def test_loop_stops_after_consecutive_nonfinite_naming_step_and_leaf():
    params, batch = _data()
    tx = make_optimizer(OptimizerConfig(learning_rate=0.1, total_steps=10), params)

    def inf_grad(p, b, key):  # finite loss, infinite gradient through a sqrt at 0
        return jnp.sum(jnp.sqrt(jnp.abs(p["w"] * 0.0))), (jnp.float32(1.0), {})

    step = jax.jit(make_train_step(inf_grad, tx))
    batches = iter([batch] * 10)
    with pytest.raises(NonFiniteError, match=r"step 3: non-finite gradient \(first non-finite "
                                             r"gradient: w\) for 3 consecutive"):
        run_training(step, create_train_state(params, tx, 0), batches, total_steps=10,
                     log_every=1, max_consecutive_skips=2, leaf_names=["w"], progress=False)


def test_nonfinite_stop_happens_at_the_step_and_counts_across_resume():
    params, batch = _data()
    tx = make_optimizer(OptimizerConfig(learning_rate=0.1, total_steps=10), params)

    def inf_grad(p, b, key):
        return jnp.sum(jnp.sqrt(jnp.abs(p["w"] * 0.0))), (jnp.float32(1.0), {})

    step = jax.jit(make_train_step(inf_grad, tx))
    seen = []

    def counted(state, batch):
        seen.append(int(state.step))
        return step(state, batch)

    # metrics are flushed every 100 steps, but the stop comes at step 3, not at a flush
    with pytest.raises(NonFiniteError, match=r"step 3: non-finite gradient"):
        run_training(counted, create_train_state(params, tx, 0), iter([batch] * 10),
                     total_steps=10, log_every=100, max_consecutive_skips=2, leaf_names=["w"],
                     progress=False)
    assert seen == [0, 1, 2]
    # a resumed state that already skipped 2 steps in a row stops at its first bad step
    resumed = create_train_state(params, tx, 0).replace(step=jnp.int32(5),
                                                         consecutive_skips=jnp.int32(2))
    with pytest.raises(NonFiniteError, match=r"step 6: .* for 3 consecutive"):
        run_training(step, resumed, iter([batch] * 10), total_steps=10, log_every=100,
                     max_consecutive_skips=2, leaf_names=["w"], progress=False)


def test_step_key_derived_from_step():
    params, batch = _data()
    tx = make_optimizer(OptimizerConfig(total_steps=10), params)
    seen = []

    def record_key(p, b, key):
        seen.append(key)
        return jnp.sum(p["w"]) * 0.0, (jnp.float32(1.0), {"k": jax.random.uniform(key)})

    step = make_train_step(record_key, tx)
    state = create_train_state(params, tx, 7)
    _, m0 = step(state, batch)
    _, m1 = step(state.replace(step=state.step + 1), batch)
    assert float(m0["train/k"]) != float(m1["train/k"])
    expected = jax.random.uniform(jax.random.fold_in(jax.random.key(7), 0))
    assert float(m0["train/k"]) == pytest.approx(float(expected))


@pytest.mark.parametrize("lora", [False, True])
def test_adam_moments_are_sharded_like_their_parameters(lora):
    """Under FSDP on 8 devices each device holds a 1/8 slice of each moment, not a copy; with
    LoRA only the adapters and the value head have moments, sharded like them."""
    from rlhf_jax import models, sharding, train
    from rlhf_jax.models import load_or_init_model
    mesh, rules = sharding.make_mesh("fsdp=8"), sharding.logical_rules("fsdp")
    extra = {"lora": models.LoraConfig(rank=8, targets=("q", "v", "down"))} if lora else {}
    _, _, params = load_or_init_model("", "tiny-llama", mesh, rules, jax.random.key(0),
                                      heads=("lm", "value"), **extra)
    tx = train.make_optimizer(OptimizerConfig(learning_rate=1e-3, total_steps=10), params,
                              freeze=models.frozen_base("") if lora else None)
    shardings = jax.tree.map(lambda x: x.sharding, params)
    abstract, init = train.compile_init(
        lambda p: train.create_train_state(p, tx, 1, param_shardings=shardings), params)
    state = init()
    adam = state.opt_state.inner_states["trainable"].inner_state[1][0]  # clip, adamw: adam
    trainable = [(path, p) for path, p in jax.tree_util.tree_flatten_with_path(params)[0]
                 if not tx.is_frozen(train.optim.path_str(path))]
    for moments in (adam.mu, adam.nu):
        flat_m = dict(jax.tree_util.tree_flatten_with_path(moments)[0])
        assert len(flat_m) == len(trainable)
        for path, p in trainable:
            assert flat_m[path].sharding.is_equivalent_to(p.sharding, p.ndim), path
    if lora:
        names = {train.optim.path_str(p).rsplit("/", 1)[-1] for p, _ in trainable}
        assert names == {"lora_a", "lora_b", "kernel", "bias"}  # value_head: kernel, bias
        assert all("value_head" in train.optim.path_str(p) or "lora_" in train.optim.path_str(p)
                   for p, _ in trainable)
        a = adam.mu["transformer"]["block_0"]["attn"]["q"]["lora_a"]  # [embed, r]: embed split
        assert a.addressable_shards[0].data.size == a.size // 8
        return
    emb = adam.mu["transformer"]["wte"]["embedding"]
    assert emb.addressable_shards[0].data.size == emb.size // 8
    # the abstract restore target says the same
    sharded = [a for a in jax.tree.leaves(abstract.opt_state) if a.ndim and
               a.sharding.spec != jax.sharding.PartitionSpec()]
    assert len(sharded) >= len(jax.tree.leaves(params))
