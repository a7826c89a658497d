"""The reward-model refresh's settings and one refresh update on a tiny reward model: the
held-out pairs stay out of the buffer, accuracy before and after is measured on the right
pairs, and the reward model learns the buffer (the PPO runs: tests/integration)."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import stages, train
from rlhf_jax.models import DecoderModel, init_params, preset
from rlhf_jax.reward import (RewardLossConfig, buffer_init, make_reward_loss, pair_accuracy,
                             pair_batch)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("fields, message", [
    ({"every": -1}, "refresh.every=-1: expected >= 0"),
    ({"steps": -1}, "refresh.steps=-1: expected >= 0"),
    ({"labels": "crowd"}, "refresh.labels='crowd': expected one of judge, simulated"),
    ({"judge": "gpt4"}, "refresh.judge='gpt4': expected one of"),
    ({"temperature": 0.0}, "refresh.temperature=0.0: expected > 0"),
    ({"prompts": 0}, "refresh.prompts=0: expected >= 1"),
    ({"buffer": 0}, "refresh.buffer=0: expected >= 1"),
    ({"learning_rate": -1.0}, "refresh.learning_rate=-1.0: expected > 0"),
    ({"heldout_fraction": 1.0}, "refresh.heldout_fraction=1.0: expected 0 <= fraction < 1"),
    ({"every": 5, "prompts": 1}, "of refresh.prompts=1 pairs holds none out"),
    ({"every": 5, "prompts": 2, "heldout_fraction": 0.9}, "leaves none to train on"),
])
def test_config_errors_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        stages.RewardRefreshConfig(**fields)


def test_the_main_job_reaches_the_refresh_settings():
    argv = ["--config.ppo.refresh.every=10", "--config.ppo.refresh.labels=simulated",
            "--config.ppo.refresh.judge=words"]
    cfg = train.config_from_dict(stages.PipelineConfig, train.parse_config(
        argv, str(ROOT / "experiments" / "configs" / "pipeline.py")).to_dict())
    refresh = cfg.ppo.refresh
    assert (refresh.every, refresh.labels, refresh.judge, refresh.enabled) == \
        (10, "simulated", "words", True)
    assert not stages.PPOStageConfig().refresh.enabled  # off unless asked for
    assert stages.RewardRefreshConfig(prompts=32, heldout_fraction=0.25).heldout == 8


def test_one_refresh_update_measures_then_trains_on_the_buffer():
    model = DecoderModel(preset("tiny-gpt2"), heads=("reward",))
    params = init_params(model, jax.random.key(0))
    rng = np.random.default_rng(0)
    n, length, prompt_len = 4, 8, 3
    tokens = rng.integers(0, 256, (n, 2, length)).astype(np.int32)
    mask = np.ones_like(tokens)
    ranks = np.array([[0, 1], [1, 0], [0, 1], [1, 0]], np.int32)
    labelled = np.array([True, False, True, True])  # pair 1 a tie; pair 3 held out
    tx = train.make_optimizer(train.OptimizerConfig(learning_rate=1e-2, total_steps=5,
                                                    schedule="constant"), params)
    update = jax.jit(stages.refresh_update(model, tx, steps=5, batch_size=4, heldout=1,
                                           prompt_len=prompt_len))
    buffer = jax.tree.map(jnp.asarray, buffer_init(6, length))
    fresh = {"tokens": tokens, "mask": mask, "ranks": ranks, "labelled": labelled}
    new, buffer, labels, m = update(params, buffer, jnp.int32(0), fresh, None,
                                    jax.random.key(1))

    ordered = np.where((ranks[:, 1] < ranks[:, 0])[:, None, None], tokens[:, ::-1], tokens)
    assert int(buffer["count"]) == 2 and int(labels) == 3 and float(m["refresh/pairs"]) == 3
    np.testing.assert_array_equal(np.asarray(buffer["tokens"])[:2], ordered[[0, 2]])
    loss = make_reward_loss(model, RewardLossConfig())

    def accuracy(p, rows):
        weight = np.isin(np.arange(n), rows).astype(np.float32)
        return pair_accuracy(loss, p, pair_batch(jnp.asarray(ordered), jnp.asarray(mask),
                                                 jnp.asarray(weight), prompt_len))

    assert float(m["refresh/accuracy_fresh"]) == float(accuracy(params, [0, 2, 3])["accuracy"])
    r = np.asarray(model.apply({"params": params}, jnp.asarray(ordered[3]),
                               jnp.asarray(mask[3])).reward)
    assert float(m["refresh/accuracy_heldout_before"]) == float(r[0] > r[1])
    assert float(m["refresh/accuracy_heldout"]) == float(accuracy(new, [3])["accuracy"])
    # five steps on the two buffered pairs lower their loss; the tie and held-out pair are unseen
    assert float(accuracy(new, [0, 2])["loss"]) < float(accuracy(params, [0, 2])["loss"])
    assert float(m["refresh/skipped"]) == 0 and np.isfinite(float(m["refresh/loss"]))
    assert "refresh/reference_std" not in m

    # with a reference set: the same training, then the head normalised on it
    reference = {"tokens": jnp.asarray(rng.integers(0, 256, (6, length)), jnp.int32),
                 "mask": jnp.ones((6, length), jnp.int32)}
    normed, _, _, m2 = update(params, jax.tree.map(jnp.asarray, buffer_init(6, length)),
                              jnp.int32(0), fresh, reference, jax.random.key(1))
    r_new = np.asarray(model.apply({"params": new}, reference["tokens"], reference["mask"])
                       .reward, np.float64)
    r_normed = np.asarray(model.apply({"params": normed}, reference["tokens"],
                                      reference["mask"]).reward, np.float64)
    assert float(m2["refresh/reference_std"]) == pytest.approx(r_new.std(), rel=1e-4)
    np.testing.assert_allclose(r_normed, (r_new - r_new.mean()) / r_new.std(), atol=1e-3)
    assert float(m2["refresh/accuracy_heldout"]) == float(m["refresh/accuracy_heldout"])
