"""Separate critic from a reward model, PPO-ptx, extra reward terms and the time split."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import DecoderModel, init_params, preset
from rlhf_jax.ppo import (PPOConfig, RewardTerm, RolloutConfig, make_rollout, ppo_update,
                          sequence_values)
from rlhf_jax.reward import critic_from_reward_model, reward_model_scorer
from rlhf_jax.sampling import SamplingConfig
from rlhf_jax.train import OptimizerConfig, make_optimizer

CFG = preset("tiny-gpt2", vocab_size=16, hidden_size=32, num_heads=4, max_position_embeddings=32)
SAMPLING = SamplingConfig(max_new_tokens=4)
RM_CFG = preset("tiny-llama", vocab_size=16, hidden_size=24, num_heads=2, num_kv_heads=1,
                intermediate_size=48, max_position_embeddings=32)


def _reward_params(num_outputs):
    rm = DecoderModel(RM_CFG, heads=("reward",), num_reward_outputs=num_outputs)
    params = init_params(rm, jax.random.key(7))
    head = params["reward_head"]  # non-trivial normalisation
    head["gain"] = jnp.linspace(0.5, 2.0, num_outputs)
    head["bias"] = jnp.linspace(-1.0, 1.0, num_outputs)
    return rm, params


@pytest.mark.parametrize("num_outputs", [1, 3])
def test_critic_from_reward_model_reproduces_reward(num_outputs):
    rm, rp = _reward_params(num_outputs)
    critic = critic_from_reward_model(rp)
    prompt, pmask = jnp.array([[0, 5, 6], [4, 5, 6]]), jnp.array([[0, 1, 1], [1, 1, 1]])
    resp, rmask = jnp.array([[7, 8, 2, 0], [9, 1, 3, 3]]), jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    values = sequence_values(critic, RM_CFG, prompt, pmask, resp, rmask)
    # V before response token t = the reward model's reward of the sequence up to token t − 1:
    # the reward head reads the last unmasked token, so mask out the rest (causal attention
    # makes the later tokens irrelevant)
    tokens = jnp.concatenate([prompt, resp], 1)
    reward = jax.jit(lambda m: rm.apply({"params": rp}, tokens, m).reward)
    for t in range(4):
        mask = jnp.concatenate([pmask, rmask * (jnp.arange(4) < t)], 1)
        want = reward(mask)
        want = want.mean(-1) if num_outputs > 1 else want
        np.testing.assert_allclose(values[:, t] * rmask[:, t], want * rmask[:, t], rtol=1e-5,
                                   atol=1e-6)
    assert (values * (1 - rmask) == 0).all()


def _setup(critic: bool):
    policy = init_params(DecoderModel(CFG, heads=("lm",) if critic else ("lm", "value")),
                         jax.random.key(0))
    params = {"policy": policy}
    if critic:
        params["critic"] = critic_from_reward_model(_reward_params(1)[1])
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-3, total_steps=100,
                                        schedule="constant"), params)
    return params, tx


def test_separate_critic_is_trained_and_values_come_from_it():
    params, tx = _setup(critic=True)
    rm, rp = _reward_params(1)
    prompts = jax.random.randint(jax.random.key(1), (8, 3), 0, 16)
    mask = jnp.ones_like(prompts)
    stats = {}
    start = time.perf_counter()
    ro = make_rollout(params, params["policy"], rp, prompts, mask, jax.random.key(2), 0.1,
                      config=CFG, critic_config=RM_CFG, sampling=SAMPLING,
                      rollout=RolloutConfig(), score_fn=reward_model_scorer(RM_CFG), stats=stats)
    wall = time.perf_counter() - start
    want = sequence_values(params["critic"], RM_CFG, prompts, mask, ro.response_tokens,
                           ro.response_mask)
    np.testing.assert_allclose(ro.values, want, rtol=1e-5, atol=1e-6)
    # the split covers the two phases and no more than the call itself
    assert {"time/generate", "time/score"} <= set(stats)
    assert stats["time/generate"] + stats["time/score"] <= wall
    before = jax.tree.map(np.array, params)
    new, _, metrics = ppo_update(params, tx.init(params), ro, jax.random.key(3), config=CFG,
                                 critic_config=RM_CFG, ppo=PPOConfig(epochs=2), tx=tx)
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), new, before)
    assert max(jax.tree.leaves(moved["critic"])) > 0 and max(jax.tree.leaves(moved["policy"])) > 0
    assert np.isfinite(metrics["ppo/value_loss"])


def _length_score(p, pt, pm, rt, rm):
    return rm.sum(1) * 0.1


def test_ptx_term_is_the_text_nll():
    params, tx = _setup(critic=True)
    prompts = jax.random.randint(jax.random.key(1), (8, 3), 0, 16)
    ro = make_rollout(params, params["policy"], None, prompts, jnp.ones_like(prompts),
                      jax.random.key(2), 0.0, config=CFG, critic_config=RM_CFG, sampling=SAMPLING,
                      rollout=RolloutConfig(), score_fn=_length_score)
    text = jax.random.randint(jax.random.key(5), (4, 6), 0, 16)
    tmask = jnp.ones_like(text).at[0, :2].set(0)  # a left-padded row
    ptx = {"tokens": text, "mask": tmask}
    # one step at learning rate 0 (the optimiser's update is zero): metrics of the initial params
    zero = make_optimizer(OptimizerConfig(learning_rate=0.0, total_steps=10,
                                          schedule="constant"), params)
    _, _, m = ppo_update(jax.tree.map(jnp.copy, params), zero.init(params), ro, jax.random.key(3),
                         ptx, config=CFG, critic_config=RM_CFG,
                         ppo=PPOConfig(epochs=1, ptx_coef=0.5), tx=zero)
    # independent reference: float64 NumPy log-softmax of the model's logits, positions whose
    # token and predecessor are real
    logits = np.asarray(DecoderModel(CFG, heads=("lm",)).apply(
        {"params": params["policy"]}, text, tmask).logits, np.float64)
    nll, n = 0.0, 0
    for b in range(4):
        for t in range(1, 6):
            if tmask[b, t] and tmask[b, t - 1]:
                row = logits[b, t - 1]
                nll += np.log(np.exp(row - row.max()).sum()) + row.max() - row[text[b, t]]
                n += 1
    np.testing.assert_allclose(m["ppo/ptx_nll"], nll / n, rtol=1e-5)
    with pytest.raises(ValueError, match="ptx_coef=0.5 needs a ptx_batch"):
        ppo_update(params, tx.init(params), ro, jax.random.key(3), config=CFG,
                   critic_config=RM_CFG, ppo=PPOConfig(ptx_coef=0.5), tx=tx)


def test_reward_terms_add_with_weights():
    params, _ = _setup(critic=True)
    prompts = jax.random.randint(jax.random.key(1), (8, 3), 0, 16)
    base = lambda p, pt, pm, rt, rm: jnp.full(rt.shape[0], 0.25)  # noqa: E731
    length = RewardTerm("length", -0.5, lambda p, pm, r, m: m.sum(1).astype(np.float32))
    odd = RewardTerm("odd", 2.0, lambda p, pm, r, m: ((r % 2) * m).sum(1) / m.sum(1))
    stats = {}
    ro = make_rollout(params, params["policy"], None, prompts, jnp.ones_like(prompts),
                      jax.random.key(4), 0.0, config=CFG, critic_config=RM_CFG, sampling=SAMPLING,
                      rollout=RolloutConfig(), score_fn=base, reward_terms=(length, odd),
                      stats=stats)
    r, m = np.asarray(ro.response_tokens), np.asarray(ro.response_mask)
    want = 0.25 - 0.5 * m.sum(1) + 2.0 * ((r % 2) * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(ro.scores, want, rtol=1e-6)
    assert stats["reward_terms/length"] == pytest.approx(m.sum(1).mean())
    bad = RewardTerm("bad", 1.0, lambda p, pm, r, m: np.zeros(3))
    with pytest.raises(ValueError, match="reward term 'bad' returned shape"):
        make_rollout(params, params["policy"], None, prompts, jnp.ones_like(prompts),
                     jax.random.key(4), 0.0, config=CFG, critic_config=RM_CFG, sampling=SAMPLING,
                     rollout=RolloutConfig(), score_fn=base, reward_terms=(bad,))


def test_ppo_ratio_is_one_at_the_sampling_temperature():
    """The update recomputes log π at the temperature the rollout was sampled at: on unchanged
    weights (learning rate 0) the ratio is 1, so approx-KL and the clip fraction are ~0."""
    params, _ = _setup(critic=True)
    prompts = jax.random.randint(jax.random.key(1), (8, 3), 0, 16)
    sampling = SamplingConfig(max_new_tokens=4, temperature=0.6)
    ro = make_rollout(params, params["policy"], None, prompts, jnp.ones_like(prompts),
                      jax.random.key(2), 0.0, config=CFG, critic_config=RM_CFG,
                      sampling=sampling, rollout=RolloutConfig(), score_fn=_length_score)
    assert ro.temperature == 0.6
    zero = make_optimizer(OptimizerConfig(learning_rate=0.0, total_steps=10,
                                          schedule="constant"), params)
    _, _, m = ppo_update(jax.tree.map(jnp.copy, params), zero.init(params), ro,
                         jax.random.key(3), config=CFG, critic_config=RM_CFG,
                         ppo=PPOConfig(epochs=1), tx=zero)
    # the two log-probs differ only by float32 rounding of different programs (~1e-6 nats), so
    # ½(log ρ)² is ~1e-12; a temperature mismatch (0.6 vs 1) gives ~0.05
    assert float(m["ppo/approx_kl"]) < 1e-8
    assert float(m["ppo/clipfrac"]) == 0.0


def test_ensemble_reward_model_in_a_rollout():
    """An ensemble reward model scores PPO rollouts with its mean, or mean − k·std."""
    params, _ = _setup(critic=True)
    rm, rp = _reward_params(3)
    prompts = jax.random.randint(jax.random.key(1), (8, 3), 0, 16)
    mask = jnp.ones_like(prompts)
    rollouts = {k: make_rollout(params, params["policy"], rp, prompts, mask, jax.random.key(2),
                                0.0, config=CFG, critic_config=RM_CFG, sampling=SAMPLING,
                                rollout=RolloutConfig(),
                                score_fn=reward_model_scorer(RM_CFG, 3, std_coef=k))
                for k in (0.0, 0.5)}
    ro = rollouts[0.0]
    tokens = jnp.concatenate([prompts, ro.response_tokens], 1)
    members = np.asarray(rm.apply({"params": rp}, tokens,
                                  jnp.concatenate([mask, ro.response_mask], 1)).reward,
                         np.float64)
    assert members.shape == (8, 3)
    # (RolloutConfig() has no missing-EOS penalty: every row keeps the reward model's score)
    np.testing.assert_allclose(np.asarray(ro.scores), members.mean(1), rtol=1e-5, atol=1e-6)
    conservative = members.mean(1) - 0.5 * members.std(1)
    assert np.all(conservative < members.mean(1))
    np.testing.assert_allclose(np.asarray(rollouts[0.5].scores), conservative, rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="only for an ensemble"):
        reward_model_scorer(RM_CFG, 1, std_coef=0.5)


@pytest.mark.parametrize("advantage", ["rloo", "grpo"])
def test_critic_free_advantages_keep_each_groups_sign(advantage):
    """RLOO/GRPO advantages are per sequence and centred within each prompt's group; by default
    they are not whitened over tokens (which would weight long responses more and here flips the
    sign of prompt A's winner). Token whitening stays available as an explicit option."""
    from rlhf_jax.ppo import finish_rollout
    from rlhf_jax.sampling import SampleOutput

    lengths = np.array([1, 10, 10, 1])  # prompt A: short winner, long loser; B: the reverse
    scores = jnp.array([0.1, 0.0, 1.0, 0.0])
    mask = (np.arange(10)[None] < lengths[:, None]).astype(np.int32)
    sample = SampleOutput(tokens=jnp.asarray(mask), logprobs=jnp.zeros((4, 10)),
                          mask=jnp.asarray(mask), lengths=jnp.asarray(lengths),
                          ended_with_eos=jnp.ones(4, bool), num_steps=jnp.int32(10))
    zeros = jnp.zeros((4, 10))
    prompts = jnp.ones((4, 2), jnp.int32)

    def advantages(**kw):
        cfg = RolloutConfig(advantage=advantage, group_size=2, **kw)
        ro = finish_rollout(sample, prompts, prompts, zeros, zeros, scores, 0.0, rollout=cfg,
                            temperature=1.0)
        return np.asarray(ro.advantages)

    s = np.array([0.1, 0.0, 1.0, 0.0], np.float64).reshape(2, 2)
    if advantage == "rloo":
        seq = (s - s[:, ::-1]).reshape(-1)  # baseline: the other sample of the group
    else:
        seq = ((s - s.mean(1, keepdims=True)) / (s.std(1, ddof=1, keepdims=True) + 1e-4))
        seq = seq.reshape(-1)
    np.testing.assert_allclose(advantages(), seq[:, None] * mask, rtol=1e-5, atol=1e-7)
    whitened = advantages(whiten_advantages=True)
    assert not np.allclose(whitened, seq[:, None] * mask)  # the option still whitens
    if advantage == "rloo":  # token whitening shifts by the token-weighted mean (8.1 / 22)
        assert whitened[0, 0] < 0 < seq[0]
