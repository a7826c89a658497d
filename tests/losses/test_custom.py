"""Your own loss in place of a built-in one: names resolve (module, file, __main__), a
from-scratch DPO / Bradley–Terry / clipped surrogate equals the library's loss and gradients,
and the offline stage trains with one and resumes exactly."""
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses, offline, ppo, reward, stages
from rlhf_jax.data import PreferenceBatch
from rlhf_jax.losses import CustomLossError
from rlhf_jax.models import DecoderModel, init_params, preset
from rlhf_jax.train import OptimizerConfig, config_from_dict, ConfigError

USER = "tests.losses.user_losses"


def test_names_resolve_and_mistakes_are_named(tmp_path, monkeypatch):
    assert losses.resolve_loss(f"{USER}:my_dpo").__name__ == "my_dpo"
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent("""
        def twice(x):
            return 2 * x
    """))
    assert losses.resolve_loss(f"{path}:twice")(3) == 6
    def notebook_loss(*a):  # noqa: E306 - what a notebook defines in __main__
        return 1
    monkeypatch.setattr(sys.modules["__main__"], "notebook_loss", notebook_loss, raising=False)
    assert losses.resolve_loss("__main__:notebook_loss") is notebook_loss
    assert losses.loss_name(losses.sum_form) == "rlhf_jax.losses.custom:sum_form"
    for spec, match in (("nocolon", "expected module:function"),
                        ("no_such_module_x:f", "cannot import 'no_such_module_x'"),
                        (f"{USER}:nothing", "has no 'nothing'"),
                        (f"{tmp_path}/absent.py:f", "is not a file")):
        with pytest.raises(CustomLossError, match=match):
            losses.resolve_loss(spec)
    with pytest.raises(CustomLossError, match="no importable name"):
        losses.loss_name(lambda x: x)
    # a config naming a missing loss fails when the config is made, naming the field
    with pytest.raises(ConfigError, match="loss.custom='x:y'"):
        config_from_dict(stages.OfflineConfig, {"loss": {"custom": "x:y"}})


def _pairs(seed=0, b=6, t=10, p=4, vocab=61):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, (b, 2, t)).astype(np.int32)
    mask = np.ones((b, 2, t), np.int32)
    mask[:, 1, -2:] = 0
    ranks = np.array([[0, 1], [1, 0]] * (b // 2), np.int32)
    return PreferenceBatch(tokens=tokens, mask=mask, ranks=ranks, valid=np.ones((b, 2), np.int32),
                           is_comparison=np.ones(b, np.int32), rating=np.zeros(b, np.float32),
                           has_rating=np.zeros(b, np.int32), annotator=np.full(b, -1, np.int32),
                           weight=np.array([1, 1, 1, 1, 1, 0], np.float32),
                           index=np.arange(b, dtype=np.int32), prompt_len=p)


def _close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=1e-6)


def test_custom_dpo_equals_the_built_in():
    model = DecoderModel(preset("tiny-llama", vocab_size=61))
    params = init_params(model, jax.random.key(0))
    ref_params = jax.tree.map(lambda x: x * 1.01, params)
    batch = _pairs()
    inputs = {"batch": batch}
    built = offline.make_offline_loss(model, offline.OfflineLossConfig("dpo", beta=0.1),
                                      ref_params)
    mine = offline.make_offline_loss(model, offline.OfflineLossConfig(
        "dpo", custom=f"{USER}:my_dpo"), ref_params)
    (a, (ca, _)), ga = jax.jit(jax.value_and_grad(built, has_aux=True))(params, inputs, None)
    (b, (cb, mb)), gb = jax.jit(jax.value_and_grad(mine, has_aux=True))(params, inputs, None)
    assert float(ca) == float(cb) == 5
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    _close(ga, gb)
    assert "mine/margin" in mb


def test_custom_reward_loss_equals_bradley_terry():
    model = DecoderModel(preset("tiny-llama", vocab_size=61), heads=("reward",))
    params = init_params(model, jax.random.key(1))
    batch = _pairs(1)
    built = reward.make_reward_loss(model, reward.RewardLossConfig())
    mine = reward.make_reward_loss(model, reward.RewardLossConfig(
        custom=f"{USER}:my_bradley_terry"))
    (a, (ca, ma)), ga = jax.jit(jax.value_and_grad(built, has_aux=True))(params, batch, None)
    (b, (cb, mb)), gb = jax.jit(jax.value_and_grad(mine, has_aux=True))(params, batch, None)
    # the mean form: count 1, so the step's division leaves the mean as it is
    assert float(cb) == 1.0
    np.testing.assert_allclose(float(a) / float(ca), float(b), rtol=1e-5)
    _close(jax.tree.map(lambda g: g / ca, ga), gb)
    np.testing.assert_allclose(float(ma["reward/accuracy"]) / float(ca),
                               float(mb["mine/accuracy"]), rtol=1e-6)


@pytest.mark.parametrize("name", ["my_clipped_surrogate", "my_mean_objective"])
def test_custom_policy_objective_equals_the_clipped_surrogate(name):
    rng = np.random.default_rng(2)
    logp, old = rng.normal(-2, 0.3, (4, 7)), rng.normal(-2, 0.3, (4, 7))
    adv, mask = rng.normal(size=(4, 7)), (rng.random((4, 7)) > 0.3).astype(np.int32)
    args = [jnp.asarray(x, jnp.float32) for x in (logp, old, adv)] + [jnp.asarray(mask)]
    want = losses.ppo_policy_loss(*args, clip=0.2)
    got = ppo.policy_objective(ppo.PPOConfig(policy_loss=f"{USER}:{name}"))(*args, clip=0.2)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-5)
    assert float(got[1]) == float(want[1]) == mask.sum()
    g_want = jax.grad(lambda lp: losses.ppo_policy_loss(lp, *args[1:], clip=0.2)[0])(args[0])
    g_got = jax.grad(lambda lp: ppo.policy_objective(ppo.PPOConfig(
        policy_loss=f"{USER}:{name}"))(lp, *args[1:], clip=0.2)[0])(args[0])
    np.testing.assert_allclose(np.asarray(g_got), np.asarray(g_want), rtol=1e-5, atol=1e-7)
    assert ppo.policy_objective(ppo.PPOConfig()) is losses.ppo_policy_loss


def test_a_sequence_level_objective_leaves_the_value_loss_a_token_mean():
    """An objective that counts sequences divides its own sum; the value loss stays the mean
    of ½(V − R)² over response tokens (not over sequences)."""
    from rlhf_jax.ppo.rollout import Rollout
    from rlhf_jax.ppo.update import _loss

    cfg = preset("tiny-gpt2")
    params = {"policy": init_params(DecoderModel(cfg), jax.random.key(0))}
    rng = np.random.default_rng(3)
    b, p, n = 3, 4, 6
    rmask = np.ones((b, n), np.int32)
    rmask[0, 4:], rmask[2, 2:] = 0, 0
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
    mb = Rollout(prompt_tokens=jnp.asarray(rng.integers(1, 50, (b, p)), jnp.int32),
                 prompt_mask=jnp.ones((b, p), jnp.int32),
                 response_tokens=jnp.asarray(rng.integers(1, 50, (b, n)), jnp.int32),
                 response_mask=jnp.asarray(rmask), logprobs=f(b, n) - 4, ref_logprobs=f(b, n),
                 values=f(b, n), scores=f(b), kl=f(b, n), rewards=f(b, n), advantages=f(b, n),
                 returns=f(b, n), ended_with_eos=jnp.ones(b, bool), temperature=1.0)
    def value_loss(objective):
        fn = jax.jit(lambda q, m: _loss(q, m, None, config=cfg, critic_config=None,
                                        ppo=objective)[1]["ppo/value_loss"])
        return float(fn(params, mb))

    mine = value_loss(ppo.PPOConfig(policy_loss=f"{USER}:my_sequence_objective"))
    want = 0.5 * np.sum((np.asarray(mb.values) - np.asarray(mb.returns)) ** 2 * rmask)
    np.testing.assert_allclose(mine, want / rmask.sum(), rtol=1e-6)
    assert value_loss(ppo.PPOConfig()) == mine


def test_offline_stage_trains_with_a_custom_loss_and_resumes_exactly(tmp_path):
    def cfg(run, steps):
        return stages.OfflineConfig(
            run_dir=str(tmp_path / run), steps=steps, batch_size=16, eval_every=0,
            optim=OptimizerConfig(learning_rate=1e-3, warmup_steps=0, total_steps=4),
            checkpoint=stages.OfflineConfig().checkpoint.__class__(save_every=2, keep_last=2),
            data=stages.OfflineData(builtin_pairs=120, validation_fraction=0.0),
            loss=offline.OfflineLossConfig(custom=f"{USER}:my_dpo"))
    whole = stages.train_offline(cfg("whole", 4))
    stages.train_offline(cfg("split", 2))
    resumed = stages.train_offline(cfg("split", 4))
    assert whole.step == resumed.step == 4
    from safetensors.numpy import load_file
    a = load_file(f"{whole.export_dir}/model.safetensors")
    b = load_file(f"{resumed.export_dir}/model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "whole" / "metrics.jsonl").read_text()
    assert "mine/margin" in rows
