"""Reward objective, evaluation metrics, normalisation, ensembles, early stopping."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.data import PreferenceBatch
from rlhf_jax.models import DecoderModel, init_params, preset
from rlhf_jax.reward import (RewardLossConfig, batch_rewards, comparison_metrics,
                             ensemble_statistics, expected_calibration_error, make_reward_loss,
                             normalised_head)
from rlhf_jax.train import early_stopping_init, early_stopping_update


def _batch(b=4, k=2, t=6, seed=0, ranks=None, ratings=False):
    rng = np.random.default_rng(seed)
    return PreferenceBatch(
        tokens=jnp.asarray(rng.integers(0, 256, (b, k, t)), jnp.int32),
        mask=jnp.ones((b, k, t), jnp.int32),
        ranks=jnp.asarray(ranks if ranks is not None else np.tile(np.arange(k), (b, 1)),
                          jnp.int32),
        valid=jnp.ones((b, k), jnp.int32), is_comparison=jnp.ones((b,), jnp.int32),
        rating=jnp.asarray(rng.uniform(-1, 1, b), jnp.float32),
        has_rating=jnp.asarray([1, 0] * (b // 2) if ratings else [0] * b, jnp.int32),
        annotator=-jnp.ones((b,), jnp.int32), weight=jnp.ones((b,), jnp.float32), prompt_len=2)


@pytest.fixture(scope="module")
def rm():
    model = DecoderModel(preset("tiny-gpt2"), heads=("reward",))
    return model, init_params(model, jax.random.key(0))


def test_objective_matches_manual_bradley_terry(rm):
    model, params = rm
    batch = _batch(ranks=[[0, 1], [1, 0], [0, 1], [1, 0]], ratings=True)
    cfg = RewardLossConfig(margin=0.2, scalar_weight=0.5, centering_coef=0.1)
    total, (count, metrics) = make_reward_loss(model, cfg)(params, batch, jax.random.key(0))
    r = np.asarray(batch_rewards(model, params, batch), np.float64)
    ref = 0.0
    for i in range(4):
        w, l = (r[i, 0], r[i, 1]) if i % 2 == 0 else (r[i, 1], r[i, 0])
        ref += np.logaddexp(0.0, -(w - l - 0.2)) + 0.1 * (w + l) ** 2
        if i % 2 == 0:  # rows with a rating
            ref += 0.5 * (r[i, 0] - float(batch.rating[i])) ** 2
    assert float(count) == 4 + 2
    assert float(total) == pytest.approx(ref, rel=1e-5)
    acc = sum((r[i, 0] > r[i, 1]) if i % 2 == 0 else (r[i, 1] > r[i, 0]) for i in range(4))
    assert float(metrics["reward/accuracy"]) == acc


def test_rankings_use_plackett_luce(rm):
    from rlhf_jax.losses import plackett_luce_loss

    model, params = rm
    batch = _batch(k=3, ranks=[[2, 0, 1]] * 4)
    total, (count, _) = make_reward_loss(model, RewardLossConfig())(params, batch, None)
    r = batch_rewards(model, params, batch)
    assert float(total) == pytest.approx(float(plackett_luce_loss(r, batch.ranks).sum()),
                                         rel=1e-5)


def test_ensemble_heads_and_uncertainty():
    model = DecoderModel(preset("tiny-gpt2"), heads=("reward",), num_reward_outputs=3)
    params = init_params(model, jax.random.key(1))
    r = batch_rewards(model, params, _batch())
    assert r.shape == (4, 2, 3)
    mean, std = ensemble_statistics(r.reshape(-1, 3))
    np.testing.assert_allclose(mean, np.asarray(r).reshape(-1, 3).mean(-1), rtol=1e-6)
    assert (np.asarray(std) > 0).all()
    # the ensemble loss is the mean of the members' losses
    from rlhf_jax.losses import bradley_terry_loss
    total, _ = make_reward_loss(model, RewardLossConfig())(params, _batch(), None)
    members = [float(bradley_terry_loss(r[:, 0, m], r[:, 1, m]).sum()) for m in range(3)]
    assert float(total) == pytest.approx(np.mean(members), rel=1e-5)


def test_metrics_by_hand():
    m = comparison_metrics(np.array([2.0, 0.0, 1.0, -1.0]), np.array([0.0, 1.0, 1.0, 0.0]),
                           annotator=np.array([0, 0, 1, 1]), annotator_names=["ann", "bob"])
    assert m["eval/accuracy"] == 0.25 and m["eval/margin"] == pytest.approx(0.0)
    assert m["eval/accuracy_annotator/ann"] == 0.5 and m["eval/accuracy_annotator/bob"] == 0.0
    expected_loss = np.mean([np.log1p(np.exp(-d)) for d in [2.0, -1.0, 0.0, -1.0]])
    assert m["eval/loss"] == pytest.approx(expected_loss)
    # ECE by hand: confidences 0.9 (right), 0.9 (wrong) → one bin, |0.5 − 0.9| = 0.4
    assert expected_calibration_error(np.array([0.9, 0.1]), 10) == pytest.approx(0.4)
    assert expected_calibration_error(np.array([0.9, 0.1, 0.95, 0.05])[[0, 2]]) == pytest.approx(
        (0.1 + 0.05) / 2)


def test_normalisation_gives_mean_zero_std_one():
    rng = np.random.default_rng(0)
    raw = rng.normal(3.0, 2.0, size=(200, 2))
    gain, bias = np.array([1.5, 0.5]), np.array([0.3, -1.0])
    rewards = raw * gain + bias
    g, b = normalised_head(gain, bias, rewards)
    new = raw * g + b
    np.testing.assert_allclose(new.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(new.std(0), 1.0, atol=1e-5)


def test_early_stopping_patience():
    s = early_stopping_init("min")
    for v, stop in [(1.0, False), (0.8, False), (0.9, False), (0.85, True)]:
        s = early_stopping_update(s, v, patience=2)
        assert s.stop == stop
    assert s.best == 0.8
    s = early_stopping_update(early_stopping_init("max"), 0.6, patience=1, mode="max")
    assert early_stopping_update(s, 0.5, patience=1, mode="max").stop


def test_scorer_features_are_what_the_heads_read():
    from rlhf_jax.reward import reward_model_scorer

    config = preset("tiny-gpt2")
    scorer = reward_model_scorer(config, num_outputs=3)
    params = init_params(DecoderModel(config, heads=("reward",), num_reward_outputs=3),
                         jax.random.key(2))
    rng = np.random.default_rng(0)
    prompt_mask = np.array([[0, 1, 1], [1, 1, 1]], np.int32)  # left-padded prompts
    response_mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], np.int32)  # right-padded responses
    seq = (rng.integers(0, 256, (2, 3)), prompt_mask, rng.integers(0, 256, (2, 4)),
           response_mask)
    members, features = scorer.members_and_features(params, *seq)
    np.testing.assert_array_equal(members, scorer.members(params, *seq))
    hidden = DecoderModel(config, heads=("reward",), num_reward_outputs=3).apply(
        {"params": params}, np.concatenate([seq[0], seq[2]], 1),
        np.concatenate([prompt_mask, response_mask], 1)).hidden
    np.testing.assert_allclose(features, np.asarray(hidden)[[0, 1], [4, 6]], rtol=1e-6)
    # the heads on the features give the members: gain_m · (w_m · h + b_m) + bias_m
    head = params["reward_head"]
    by_hand = (np.asarray(features, np.float64) @ np.asarray(head["proj"]["kernel"], np.float64)
               + np.asarray(head["proj"]["bias"])) * np.asarray(head["gain"]) + \
        np.asarray(head["bias"])
    np.testing.assert_allclose(members, by_hand, rtol=1e-4, atol=1e-5)
