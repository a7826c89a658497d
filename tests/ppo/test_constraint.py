"""The cost constraint (Safe RLHF's Lagrangian): the multiplier follows its formula, and PPO
whose reward pays for a costly token keeps that token's rate under the limit, where the same
run without the constraint does not."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import ppo, stages, train
from rlhf_jax.models import DecoderModel, init_params, preset
from rlhf_jax.ppo import (ConstraintConfig, PPOConfig, RewardTerm, RolloutConfig,
                          lagrange_init, lagrange_update)
from rlhf_jax.sampling import SamplingConfig
from rlhf_jax.train import OptimizerConfig, create_train_state, make_optimizer

GOOD, COSTLY = 3, 5
CONFIG = preset("tiny-gpt2", vocab_size=16, hidden_size=32, num_heads=4,
                max_position_embeddings=32)


def test_multiplier_follows_the_violation():
    s = lagrange_init(2.0)
    np.testing.assert_allclose(float(s.multiplier), 2.0, rtol=1e-6)
    up = lagrange_update(s, 0.3, limit=0.1, lr=0.5)  # ln λ + 0.5·0.2
    np.testing.assert_allclose(float(up.multiplier), 2.0 * np.exp(0.1), rtol=1e-6)
    down = lagrange_update(s, 0.0, limit=0.1, lr=0.5)
    np.testing.assert_allclose(float(down.multiplier), 2.0 * np.exp(-0.05), rtol=1e-6)
    assert float(lagrange_update(s, 1e6, limit=0, lr=1).log_lambda) == 20.0  # capped
    with pytest.raises(ValueError, match="multiplier=0"):
        lagrange_init(0.0)
    with pytest.raises(ValueError, match="constraint.cost='rudeness'"):
        stages.PPOStageConfig(constraint=ConstraintConfig(cost="rudeness"))
    with pytest.raises(ValueError, match="the profanity cost is never below 0.0"):
        stages.PPOStageConfig(constraint=ConstraintConfig(cost="profanity", limit=-0.1))
    stages.PPOStageConfig(constraint=ConstraintConfig(cost="objective:harmless", limit=-0.5))
    with pytest.raises(ValueError, match="would count twice"):
        stages.PPOStageConfig(constraint=ConstraintConfig(cost="profanity"),
                              reward_terms={"profanity": -1.0})


def _fraction(token):
    def fn(prompt_tokens, prompt_mask, response_tokens, response_mask):
        hits = (response_tokens == token) * response_mask
        return hits.sum(1) / np.maximum(response_mask.sum(1), 1)
    return fn


def _score(score_params, prompt_tokens, prompt_mask, response_tokens, response_mask):
    """The reward pays for both tokens alike: only the constraint tells them apart."""
    hits = ((response_tokens == GOOD) | (response_tokens == COSTLY)) * response_mask
    return hits.sum(1) / jnp.maximum(response_mask.sum(1), 1)


def _run(constraint, iterations=30):
    model = DecoderModel(CONFIG, heads=("lm", "value"))
    params = {"policy": init_params(model, jax.random.key(0))}
    ref = jax.tree.map(jnp.copy, params["policy"])
    tx = make_optimizer(OptimizerConfig(learning_rate=3e-3, total_steps=10**6,
                                        schedule="constant", clip_norm=1.0), params)
    helpers = {"kl": ppo.fixed_kl_init(0.02)}
    if constraint.enabled:
        helpers["constraint"] = lagrange_init(constraint.multiplier)
    state = create_train_state(params, tx, 1, helpers=helpers)
    cost = RewardTerm("costly", 0.0, _fraction(COSTLY))
    step = ppo.make_ppo_step(config=CONFIG, ref_params=ref, score_params=None, score_fn=_score,
                             sampling=SamplingConfig(max_new_tokens=8), rollout=RolloutConfig(),
                             ppo=PPOConfig(num_minibatches=2), tx=tx,
                             kl_update=ppo.fixed_kl_update, constraint=constraint, cost=cost)
    prompts = np.asarray(jax.random.randint(jax.random.key(100), (32, 4), 0, 16), np.int32)
    batch = {"prompts": {"tokens": prompts, "mask": np.ones_like(prompts)}, "ptx": None}
    history = []
    for _ in range(iterations):
        state, metrics = step(state, batch)
        history.append(metrics)
    return state, history


@pytest.mark.slow
def test_a_reward_that_pays_for_a_cost_is_held_to_the_limit():
    free_state, free = _run(ConstraintConfig())
    held_state, held = _run(ConstraintConfig(cost="costly", limit=0.05, multiplier=0.5, lr=2.0))
    assert "constraint" not in free_state.helpers and "constraint/lambda" not in free[-1]
    costly = [m["constraint/cost"] for m in held]
    lam = [m["constraint/lambda"] for m in held]
    # unconstrained, the costly token pays as well as the other and its share grows (the cost
    # is still measured, with no weight)
    free_costly = [m["constraint/cost"] for m in free]
    assert np.mean(free_costly[-5:]) > np.mean(costly[-5:]) + 0.1, (free_costly, costly)
    # held: λ rises while the cost exceeds the limit, and the cost comes back under it
    assert max(lam) > lam[0] * 1.5, lam  # measured: 0.5 → 1.0 by iteration 14, then down
    assert np.mean(costly[-5:]) < 0.05, costly  # measured: 0.009 (free: 0.53)
    # the reward still rises, through the token that costs nothing
    assert np.mean([float(m["score/mean"]) for m in held[-5:]]) > \
        float(held[0]["score/mean"]) + 0.2
    # the multiplier is in the train state, which the checkpoint saves
    np.testing.assert_allclose(float(held_state.helpers["constraint"].multiplier),
                               lam[-1] * np.exp(2.0 * (costly[-1] - 0.05)), rtol=1e-5)
