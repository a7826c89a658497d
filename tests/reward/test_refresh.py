"""The reward-model refresh's pure pieces against independent NumPy computations: labels from a
judge and from a simulated Bradley–Terry annotator, the newest-first pair buffer and its
batches, a reward model's accuracy, loss and margin on weighted pairs, and the head normalised
on a reference set."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import DecoderModel, init_params, preset
from rlhf_jax.reward import (RewardLossConfig, buffer_add, buffer_batch, buffer_init,
                             chosen_first, make_reward_loss, normalised_head, pair_accuracy,
                             pair_batch, pair_labels, renormalised_head)


def test_judge_labels_prefer_the_higher_score_and_drop_ties():
    g_a = [0.5, -0.2, 0.0, 0.3, 1.0]
    g_b = [0.1, 0.4, 0.0, 0.3, -1.0]
    wins, labelled = pair_labels(g_a, g_b)
    assert wins.tolist() == [a > b for a, b in zip(g_a, g_b)]
    assert labelled.tolist() == [True, True, False, False, True]


def test_simulated_labels_are_bradley_terry_draws_around_the_judge():
    rng = np.random.default_rng(0)
    g_a, g_b, u = rng.normal(size=(3, 200))
    wins, labelled = pair_labels(g_a, g_b, u, temperature=0.3)
    p_ref = [1.0 / (1.0 + np.exp(-(a - b) / 0.3)) for a, b in zip(g_a, g_b)]
    assert wins.tolist() == [ui < p for ui, p in zip(u, p_ref)] and labelled.all()
    # over many draws the share of wins is σ(Δ/T); a huge gap does not overflow
    draws = rng.uniform(size=20000)
    share = pair_labels(np.full(20000, 0.2), np.zeros(20000), draws, temperature=0.5)[0].mean()
    assert share == pytest.approx(1 / (1 + np.exp(-0.4)), abs=0.01)
    assert pair_labels([1e6], [0.0], [0.999], temperature=1e-3)[0].tolist() == [True]
    with pytest.raises(ValueError, match="uniform"):
        pair_labels([1.0], [0.0], temperature=0.3)


def test_chosen_first_swaps_the_pairs_ranked_second_first():
    tokens = np.arange(3 * 2 * 4).reshape(3, 2, 4)
    ranks = np.array([[0, 1], [1, 0], [0, 0]])
    t, m = chosen_first(jnp.asarray(tokens), jnp.asarray(tokens + 100), jnp.asarray(ranks))
    expected = np.stack([tokens[0], tokens[1, ::-1], tokens[2]])
    np.testing.assert_array_equal(t, expected)
    np.testing.assert_array_equal(m, expected + 100)


def test_buffer_keeps_the_newest_pairs_first():
    capacity, length = 5, 3
    buffer = jax.tree.map(jnp.asarray, buffer_init(capacity, length))
    reference = []  # newest first
    rng = np.random.default_rng(1)
    add = jax.jit(buffer_add)
    for round_ in range(4):
        tokens = rng.integers(1, 50, (3, 2, length)).astype(np.int32)
        keep = rng.uniform(size=3) < 0.7
        buffer = add(buffer, jnp.asarray(tokens), jnp.asarray(tokens * 0 + round_),
                     jnp.asarray(keep))
        reference = ([t for t, k in zip(tokens, keep) if k] + reference)[:capacity]
        n = int(buffer["count"])
        assert n == len(reference)
        np.testing.assert_array_equal(np.asarray(buffer["tokens"])[:n],
                                      np.asarray(reference).reshape(n, 2, length))
    # a batch draws only the valid rows; an empty buffer weighs nothing
    batch = buffer_batch(buffer, jax.random.key(0), 64, prompt_len=1)
    valid = {tuple(r.ravel()) for r in np.asarray(buffer["tokens"])[:int(buffer["count"])]}
    assert {tuple(r.ravel()) for r in np.asarray(batch.tokens)} <= valid
    assert np.all(np.asarray(batch.weight) == 1) and np.all(np.asarray(batch.ranks) == [0, 1])
    empty = buffer_batch(jax.tree.map(jnp.asarray, buffer_init(4, length)), jax.random.key(0),
                         8, prompt_len=1)
    assert float(np.sum(empty.weight)) == 0.0


def test_pair_accuracy_loss_and_margin_match_numpy():
    model = DecoderModel(preset("tiny-gpt2"), heads=("reward",))
    params = init_params(model, jax.random.key(0))
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 256, (6, 2, 7)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[:, :, :2] = rng.integers(0, 2, (6, 2, 2))  # left padding of the prompt
    weight = np.array([1, 1, 0, 1, 1, 1], np.float32)
    loss = make_reward_loss(model, RewardLossConfig())
    out = pair_accuracy(loss, params, pair_batch(jnp.asarray(tokens), jnp.asarray(mask),
                                                 jnp.asarray(weight), prompt_len=3))
    one = jax.jit(lambda t, m: model.apply({"params": params}, t[None], m[None]).reward[0])
    r = np.array([[float(one(tokens[i, k], mask[i, k])) for k in range(2)] for i in range(6)],
                 np.float64)
    d = r[:, 0] - r[:, 1]
    assert float(out["pairs"]) == 5
    assert float(out["accuracy"]) == pytest.approx(np.sum(weight * (d > 0)) / 5)
    assert float(out["loss"]) == pytest.approx(np.sum(weight * np.logaddexp(0, -d)) / 5,
                                               rel=1e-4)
    assert float(out["margin"]) == pytest.approx(np.sum(weight * np.abs(d)) / 5, rel=1e-4)
    none = pair_accuracy(loss, params, pair_batch(jnp.asarray(tokens), jnp.asarray(mask),
                                                  jnp.zeros(6), prompt_len=3))
    assert np.isnan(float(none["accuracy"]))


def test_renormalised_head_matches_the_reward_stage_normalisation():
    rng = np.random.default_rng(3)
    head = {"gain": jnp.asarray(rng.uniform(0.5, 2, 3), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=3), jnp.float32),
            "proj": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
    rewards = rng.normal(2.0, 3.0, (50, 3))
    rewards[:, 2] = 1.5  # a constant head is left as it was
    out = renormalised_head({"reward_head": head, "transformer": {}}, jnp.asarray(rewards))
    gain, bias = normalised_head(head["gain"][:2], head["bias"][:2], rewards[:, :2])
    np.testing.assert_allclose(out["reward_head"]["gain"][:2], gain, rtol=1e-6)
    np.testing.assert_allclose(out["reward_head"]["bias"][:2], bias, rtol=1e-5)
    assert float(out["reward_head"]["gain"][2]) == float(head["gain"][2])
    assert float(out["reward_head"]["bias"][2]) == float(head["bias"][2])
    assert out["reward_head"]["proj"] is head["proj"]
