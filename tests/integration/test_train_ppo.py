"""stages.train_ppo on 8 fake devices: critic/advantage variants, ensemble reward models, the
reward-model refresh, errors (exact resume after SIGKILL: test_resume.py)."""
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from rlhf_jax import stages, train
from rlhf_jax.models import CheckpointFormatError
from rlhf_jax.models._safetensors import SafetensorsFile

pytestmark = pytest.mark.slow


def _reward_model(run_dir, **kw):
    cfg = train.config_from_dict(stages.RewardConfig, {
        "run_dir": str(run_dir), "steps": 20, "eval_every": 10, "normalise_samples": 64,
        "data": {"builtin_pairs": 300}, "checkpoint": {"save_every": 20}, **kw})
    return Path(stages.train_reward_model(cfg).export_dir)


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    return _reward_model(tmp_path_factory.mktemp("reward"))


def _ppo(run_dir, reward_dir, **overrides):
    """A tiny PPO run, configured as the entry script's ConfigDict would be (dotted keys)."""
    base = {"run_dir": str(run_dir), "reward_dir": str(reward_dir), "batch_size": 8,
            "log_every": 1, "eval_prompts": 8, "sampling.max_new_tokens": 6,
            "checkpoint.save_every": 2, "mesh": "data=2,fsdp=4", "ppo.epochs": 2}
    nested: dict = {}
    for key, value in {**base, **overrides}.items():
        *path, last = key.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    stages.train_ppo(train.config_from_dict(stages.PPOStageConfig, nested))
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _weights(run_dir):
    f = SafetensorsFile(Path(run_dir) / "export" / "model.safetensors")
    return {k: np.array(f.get(k)) for k in f.keys()}


def test_shared_value_head_ptx_and_text_terms(tmp_path, reward_dir):
    # with the vocabulary in chunks (log-probs, entropy and the ptx NLL) and rematerialised
    # blocks, as a large model would run
    rows = _ppo(tmp_path / "v", reward_dir, steps=2, critic="shared", logit_chunk=96,
                remat="dots_no_batch",
                **{"ppo.ptx_coef": 0.1, "ptx.batch_size": 8, "reward_terms.repetition": -1.0,
                   "stop_tokens": "good", "constraint.cost": "profanity",
                   "constraint.limit": 0.0, "constraint.multiplier": 0.5})
    last = rows[-1]
    assert last["step"] == 2 and np.isfinite(last["ppo/ptx_nll"])
    assert last["ppo/value_loss"] > 0  # the value head on the policy is trained
    assert "reward_terms/repetition" in last
    # the profanity classifier's mean is constrained: with a limit of 0 any cost raises λ
    assert rows[0]["constraint/lambda"] == 0.5 and rows[0]["constraint/cost"] > 0
    np.testing.assert_allclose(last["constraint/lambda"],
                               0.5 * np.exp(0.5 * rows[0]["constraint/cost"]), rtol=1e-5)


def test_ensemble_reward_model_drives_critic_free_ppo(tmp_path, reward_dir):
    """A reward model with 3 heads drives RLOO with the conservative score mean − k·std; a
    critic-free run loads no critic, so nothing regresses values toward zero."""
    ensemble = _reward_model(tmp_path / "rm3", num_reward_outputs=3, steps=4, eval_every=2,
                             checkpoint={"save_every": 4}, optim={"warmup_steps": 1})
    rows = _ppo(tmp_path / "p", ensemble, steps=2, reward_std_coef=0.5,
                **{"rollout.advantage": "rloo", "rollout.group_size": 2})
    assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["score/reward_model"])
    assert all(r["ppo/value_loss"] == 0.0 for r in rows if "ppo/value_loss" in r)
    after = [json.loads(x) for x in (tmp_path / "p" / "samples_after.jsonl").open()]
    assert len(after) == 8 and all(np.isfinite(r["proxy"]) for r in after)
    with pytest.raises(train.ConfigError, match="reward_std_coef=0.5 needs an ensemble"):
        _ppo(tmp_path / "q", reward_dir, steps=1, reward_std_coef=0.5)


def test_stop_tokens_resolve_to_single_vocabulary_ids(reward_dir):
    from rlhf_jax.models import load_tokenizer
    from rlhf_jax.train import ConfigError
    tok = load_tokenizer(reward_dir)
    stop_ids = stages.stop_token_ids
    assert stop_ids(tok, "") == ()
    ids = stop_ids(tok, "good,bad")
    assert [tok.decode([i]).strip() for i in ids] == ["good", "bad"]
    with pytest.raises(ConfigError, match="'wonderful good' is not one token"):
        stop_ids(tok, "wonderful good")


def test_batch_size_must_split_over_the_mesh(tmp_path, reward_dir):
    from rlhf_jax.train import ConfigError
    with pytest.raises(ConfigError, match=r"ptx.batch_size = 4 must be divisible by 8"):
        _ppo(tmp_path / "c", reward_dir, **{"ppo.ptx_coef": 0.1, "ptx.batch_size": 4})


def test_missing_reward_model_and_tokenizer_mismatch(tmp_path, reward_dir):
    with pytest.raises(CheckpointFormatError, match="reward_dir='.*nowhere' does not exist"):
        _ppo(tmp_path / "a", tmp_path / "nowhere")
    from tests.hf_reference import train_tiny_tokenizer
    from rlhf_jax.models import DecoderModel, init_params, load_hf_config, save_hf_checkpoint
    import jax
    config = load_hf_config(reward_dir)
    policy = tmp_path / "policy"
    save_hf_checkpoint(policy, config, init_params(DecoderModel(config), jax.random.key(0)),
                       tokenizer=train_tiny_tokenizer(tmp_path / "tok"))
    with pytest.raises(CheckpointFormatError, match="tokenizers of policy_dir=.* differ"):
        _ppo(tmp_path / "b", reward_dir, policy_dir=str(policy))


def test_reward_model_refresh_is_logged_and_scores_the_next_iteration(tmp_path, reward_dir):
    """A LoRA policy on 8 devices whose reward model is refreshed after every iteration on
    labels of a simulated annotator judging by word count: the refresh is logged, the reward
    model's weights move, and PPO's second iteration scores the very same samples as a run
    without refresh with the refreshed model."""
    from rlhf_jax.reward import load_reward_model
    common = {"steps": 2, "lora.rank": 4, "optim.learning_rate": 1e-3}
    plain = _ppo(tmp_path / "plain", reward_dir, **common)
    rows = _ppo(tmp_path / "fresh", reward_dir, **common, **{
        "refresh.every": 1, "refresh.labels": "simulated", "refresh.judge": "words",
        "refresh.temperature": 0.5, "refresh.prompts": 8, "refresh.steps": 4,
        "refresh.batch_size": 8, "refresh.learning_rate": 3e-3})
    assert [r["refresh/labels"] for r in rows] == [8, 16]  # simulated: every distinct pair
    assert [r["refresh/buffer"] for r in rows] == [6, 12]  # 2 of each 8 held out
    for r in rows:
        assert 0 <= r["refresh/accuracy_fresh"] <= 1 and 0 <= r["refresh/accuracy_heldout"] <= 1
        assert r["refresh/skipped"] == 0 and r["refresh/judge_score"] > 0
    assert rows[0]["score/reward_model"] == plain[0]["score/reward_model"]
    assert rows[1]["response/length"] == plain[1]["response/length"]  # the same samples...
    assert rows[1]["score/reward_model"] != plain[1]["score/reward_model"]  # ...rescored
    _, before, _ = load_reward_model(reward_dir)
    _, after, meta = load_reward_model(tmp_path / "fresh" / "reward_refreshed")
    assert meta["refresh_labels"] == 16 and meta["refreshed_from"] == str(reward_dir)
    moved = {name: not np.array_equal(a, b) for name, a, b in zip(
        train.leaf_names(before), jax.tree.leaves(before), jax.tree.leaves(after))}
    # every weight learns but the projection's bias (a Bradley-Terry loss ignores a shift);
    # the head's own bias is set by the normalisation on the reference policy's answers
    assert [k for k, v in moved.items() if not v] == ["reward_head/proj/bias"]
    assert meta["refresh_normalised"] and all(r["refresh/reference_std"] > 0 for r in rows)
