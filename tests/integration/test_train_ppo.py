"""experiments/train_ppo.py on 8 fake devices: exact resume, critic/advantage variants, errors."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from rlhf_jax.models import CheckpointFormatError
from rlhf_jax.models._safetensors import SafetensorsFile

ROOT = Path(__file__).resolve().parents[2]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reward")
    _script("train_reward").main([f"--config.run_dir={run_dir}", "--config.steps=20",
                                  "--config.eval_every=10", "--config.data.builtin_pairs=300",
                                  "--config.normalise_samples=64", "--config.checkpoint.save_every=20"])
    return run_dir / "export"


def _ppo(run_dir, reward_dir, *extra):
    _script("train_ppo").main([f"--config.run_dir={run_dir}", f"--config.reward_dir={reward_dir}",
                               "--config.batch_size=8", "--config.log_every=1",
                               "--config.eval_prompts=8", "--config.sampling.max_new_tokens=6",
                               "--config.checkpoint.save_every=2", "--config.mesh=data=2,fsdp=4",
                               "--config.ppo.epochs=2", *extra])
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _weights(run_dir):
    f = SafetensorsFile(Path(run_dir) / "export" / "model.safetensors")
    return {k: np.array(f.get(k)) for k in f.keys()}


def test_resume_is_exact_and_kl_state_is_saved(tmp_path, reward_dir):
    kl = ["--config.kl.controller=adaptive", "--config.kl.target=0.01", "--config.kl.horizon=20"]
    full = _ppo(tmp_path / "full", reward_dir, "--config.steps=4", *kl)
    _ppo(tmp_path / "split", reward_dir, "--config.steps=2", *kl)
    split = _ppo(tmp_path / "split", reward_dir, "--config.steps=4", *kl)
    by_step = lambda rows: {r["step"]: {k: v for k, v in r.items() if not k.startswith("time/")}
                            for r in rows if "score/mean" in r}  # noqa: E731
    a, b = by_step(full), by_step(split)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for s in (3, 4):
        assert a[s] == b[s], s
    betas = [a[s]["kl/beta"] for s in (1, 2, 3, 4)]
    assert betas[1] != betas[0] and betas[3] != betas[2]  # the adaptive β moved, and resumed
    for k, v in _weights(tmp_path / "full").items():
        np.testing.assert_array_equal(v, _weights(tmp_path / "split")[k], err_msg=k)
    assert {"time/generate", "time/score", "time/update"} <= set(full[-1])
    before = [json.loads(x) for x in (tmp_path / "full" / "samples_before.jsonl").open()]
    assert len(before) == 8 and all("response" in r for r in before)


def test_shared_value_head_rloo_ptx_and_text_terms(tmp_path, reward_dir):
    rows = _ppo(tmp_path / "v", reward_dir, "--config.steps=2", "--config.critic=shared",
                "--config.rollout.advantage=rloo", "--config.rollout.group_size=2",
                "--config.ppo.ptx_coef=0.1", "--config.ptx.batch_size=8",
                "--config.reward_terms.repetition=-1.0", "--config.stop_tokens=good")
    last = rows[-1]
    assert last["step"] == 2 and np.isfinite(last["ppo/ptx_nll"]) and last["ppo/ptx_nll"] > 0
    assert 0 <= last["reward_terms/repetition"] <= 1


def test_stop_tokens_resolve_to_single_vocabulary_ids(reward_dir):
    from rlhf_jax.models import load_tokenizer
    from rlhf_jax.train import ConfigError
    tok = load_tokenizer(reward_dir)
    stop_ids = _script("train_ppo").stop_ids
    assert stop_ids(tok, "") == ()
    ids = stop_ids(tok, "good,bad")
    assert [tok.decode([i]).strip() for i in ids] == ["good", "bad"]
    with pytest.raises(ConfigError, match="'wonderful good' is not one token"):
        stop_ids(tok, "wonderful good")


def test_batch_size_must_split_over_the_mesh(tmp_path, reward_dir):
    from rlhf_jax.train import ConfigError
    with pytest.raises(ConfigError, match=r"ptx.batch_size = 4 must be divisible by 8"):
        _ppo(tmp_path / "c", reward_dir, "--config.ppo.ptx_coef=0.1", "--config.ptx.batch_size=4")


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
        _ppo(tmp_path / "b", reward_dir, f"--config.policy_dir={policy}")
