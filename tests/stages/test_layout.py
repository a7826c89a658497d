"""Run directories: the stored config, its hash, and refusing to resume a different run."""
import dataclasses
import json

import pytest

from rlhf_jax import stages, train
from rlhf_jax.stages.layout import RESUME_SAFE_KEYS, config_hash


def test_first_run_stores_config_and_hash(tmp_path):
    cfg = {"seed": 0, "optim": {"learning_rate": 0.1}, "steps": 10}
    stages.check_run_config(tmp_path / "config.json", cfg)  # nothing there: nothing to check
    assert not (tmp_path / "config.json").exists()
    stages.record_run_config(tmp_path / "config.json", cfg)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["config"] == cfg and stored["hash"] == config_hash(cfg)
    assert len(stored["hash"]) == 64


def test_different_config_is_refused_naming_the_keys(tmp_path):
    path = tmp_path / "config.json"
    stages.record_run_config(path, {"seed": 0, "optim": {"learning_rate": 0.1}, "steps": 10})
    with pytest.raises(stages.ConfigMismatchError) as err:
        stages.check_run_config(path, {"seed": 1, "optim": {"learning_rate": 0.2}, "steps": 10})
    msg = str(err.value)
    assert "optim.learning_rate: 0.1 -> 0.2" in msg and "seed: 0 -> 1" in msg
    assert "allow_config_change" in msg
    # the stored config is untouched by a refused run
    assert json.loads(path.read_text())["config"]["seed"] == 0


def test_resume_safe_keys_and_explicit_override(tmp_path):
    path = tmp_path / "config.json"
    stages.record_run_config(path, {"seed": 0, "steps": 10, "log_every": 5})
    assert "steps" in RESUME_SAFE_KEYS
    stages.check_run_config(path, {"seed": 0, "steps": 20, "log_every": 1})  # continue longer
    stages.check_run_config(path, {"seed": 3, "steps": 20, "log_every": 1}, allow_change=True)
    with pytest.raises(stages.ConfigMismatchError, match="seed: 0 -> 3"):
        stages.check_run_config(path, {"seed": 3, "steps": 20, "log_every": 1})


def test_run_dir_and_fields_added_since_do_not_count(tmp_path):
    path = tmp_path / "config.json"
    stages.record_run_config(path, {"run_dir": "runs/a", "seed": 0})
    stages.check_run_config(path, {"run_dir": "/abs/runs/a", "seed": 0})
    # a field the stored config lacks is fine at its default, not at another value
    stages.check_run_config(path, {"run_dir": "runs/a", "seed": 0, "new": 1},
                            defaults={"new": 1})
    with pytest.raises(stages.ConfigMismatchError, match=r"new: '\(absent\)' -> 2"):
        stages.check_run_config(path, {"run_dir": "runs/a", "seed": 0, "new": 2},
                                defaults={"new": 1})


def test_more_steps_is_refused_when_the_schedule_depends_on_them():
    from rlhf_jax.stages.common import resolved_config
    cosine = stages.SFTConfig(steps=100)
    assert resolved_config(cosine)["optim"]["total_steps"] == 100
    longer = resolved_config(dataclasses.replace(cosine, steps=200))
    from rlhf_jax.stages.layout import config_differences
    assert config_differences(resolved_config(cosine), longer) == [
        "optim.total_steps: 100 -> 200"]
    # a constant learning rate does not depend on the run's length
    ppo = stages.PPOStageConfig(steps=10)
    assert config_differences(resolved_config(ppo),
                              resolved_config(dataclasses.replace(ppo, steps=20))) == []


def test_unreadable_stored_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(stages.ConfigMismatchError, match="unreadable run config"):
        stages.check_run_config(tmp_path / "config.json", {"seed": 0})


@pytest.mark.slow
def test_a_stage_refuses_to_resume_another_runs_directory(tmp_path):
    base = stages.SFTConfig(run_dir=str(tmp_path / "sft"), steps=2, batch_size=8, length=8,
                            log_every=1, optim=dataclasses.replace(
                                stages.SFTConfig().optim, warmup_steps=0, schedule="constant"),
                            checkpoint=dataclasses.replace(
                                stages.SFTConfig().checkpoint, async_save=False))
    with pytest.raises(train.ConfigError, match="batch_size = 4 must be divisible by 8"):
        stages.train_sft(dataclasses.replace(base, batch_size=4))
    # a config refused before training starts leaves nothing that a fixed config must match
    with pytest.raises(train.ConfigError, match="optim.warmup_steps=20 exceeds steps=2"):
        stages.train_sft(dataclasses.replace(base, optim=dataclasses.replace(
            base.optim, warmup_steps=20, schedule="cosine")))
    assert not (tmp_path / "sft" / "config.json").exists()
    first = stages.train_sft(base)
    assert json.loads((tmp_path / "sft" / "config.json").read_text())["config"]["steps"] == 2
    assert first.step == 2 and not first.preempted
    changed = dataclasses.replace(base, optim=dataclasses.replace(base.optim,
                                                                  learning_rate=1e-2))
    with pytest.raises(stages.ConfigMismatchError, match="optim.learning_rate: 0.003 -> 0.01"):
        stages.train_sft(changed)
    # more steps continue a run whose (constant) schedule does not depend on them, and an
    # explicit override continues a changed config
    assert stages.train_sft(dataclasses.replace(base, steps=3)).step == 3
    forced = stages.train_sft(dataclasses.replace(changed, steps=4, allow_config_change=True))
    assert forced.step == 4


def test_config_from_dict_names_the_bad_key():
    d = train.config_to_dict(stages.PPOStageConfig())
    assert train.config_from_dict(stages.PPOStageConfig, d) == stages.PPOStageConfig()
    d["rollout"]["advantage"] = "ppo"
    with pytest.raises(train.ConfigError, match=r"config.rollout: .*advantage='ppo'"):
        train.config_from_dict(stages.PPOStageConfig, d)
    with pytest.raises(train.ConfigError, match=r"config.kl: unknown key\(s\) \['bta'\]"):
        train.config_from_dict(stages.PPOStageConfig, {"kl": {"bta": 0.1}})
    with pytest.raises(train.ConfigError, match=r"config.steps='ten': expected int"):
        train.config_from_dict(stages.PPOStageConfig, {"steps": "ten"})
    with pytest.raises(train.ConfigError, match="critic='value'"):
        train.config_from_dict(stages.PPOStageConfig, {"critic": "value"})


def test_sft_config_refuses_a_file_it_would_not_read():
    with pytest.raises(ValueError, match=r"data.file='own.jsonl' is read only with "
                                         r"data.source='text'.*--config.data.source=text"):
        stages.SFTData(file="own.jsonl")
    with pytest.raises(train.ConfigError, match="data.file='own.jsonl'"):
        train.config_from_dict(stages.SFTConfig, {"data": {"file": "own.jsonl"}})
    assert stages.SFTData(source="text", file="own.jsonl").row_len == 1024


def test_sft_rows_fit_a_gpt2_models_positions():
    from rlhf_jax import models
    from rlhf_jax.stages.sft import _row_len

    gpt2, llama = models.preset("tiny-gpt2"), models.preset("tiny-llama")
    own = stages.SFTData(source="text", file="own.jsonl")
    assert gpt2.max_position_embeddings == 128
    assert _row_len(own, gpt2) == 128 and _row_len(own, llama) == 1024  # the file's default
    assert _row_len(stages.SFTData(source="text"), gpt2) == 24
    with pytest.raises(ValueError, match=r"data.max_len=512 exceeds the model's 128 learned "
                                         r"positions.*--config.data.max_len to at most 128"):
        _row_len(dataclasses.replace(own, max_len=512), gpt2)


def test_ppo_lengths_fit_a_gpt2_policys_positions():
    from rlhf_jax import models
    from rlhf_jax.stages.ppo import check_positions as _check_positions

    gpt2, llama = models.preset("tiny-gpt2"), models.preset("tiny-llama")
    own = stages.PPOStageConfig(prompts=stages.PromptData(file="prompts.jsonl"))
    assert own.prompts.prompt_len == 512
    _check_positions(own, llama)  # rotary positions: no learned table to run past
    _check_positions(stages.PPOStageConfig(), gpt2)  # the built-in 8 + 10
    with pytest.raises(train.ConfigError, match=r"prompts.max_prompt_len=512 \+ "
                                                r"sampling.max_new_tokens=10 = 522 tokens "
                                                r"exceed the policy's 128 learned positions"):
        _check_positions(own, gpt2)
    online = stages.OnlineDPOConfig(prompts=stages.PromptData(file="prompts.jsonl"),
                                    sampling=stages.OnlineDPOConfig().sampling)
    _check_positions(stages.OnlineDPOConfig(), gpt2)  # online DPO's too (it has no ptx mix)
    with pytest.raises(train.ConfigError, match=r"= 522 tokens exceed the policy's 128"):
        _check_positions(online, gpt2)


def test_reward_config_refuses_evaluation_without_a_held_out_split():
    no_val = stages.RewardData(validation_fraction=0.0)
    with pytest.raises(ValueError, match=r"data.validation_fraction=0 holds nothing out, but "
                                         r"eval_every=50, checkpoint.keep_best=1 evaluate"):
        stages.RewardConfig(data=no_val)
    with pytest.raises(ValueError, match="early_stopping.patience=3"):
        stages.RewardConfig(data=no_val, eval_every=0, early_stopping=stages.EarlyStopping(
            patience=3), checkpoint=dataclasses.replace(stages.RewardConfig().checkpoint,
                                                        keep_best=0))
    with pytest.raises(ValueError, match=r"data.validation_fraction=1.0: expected 0 <= x < 1"):
        stages.RewardConfig(data=stages.RewardData(validation_fraction=1.0))
    # evaluation off: no held-out split is needed
    stages.RewardConfig(data=no_val, eval_every=0, checkpoint=dataclasses.replace(
        stages.RewardConfig().checkpoint, keep_best=0))


def test_stages_keep_the_compilation_cache_already_configured(tmp_path):
    """tests/conftest.py gives the session one cache (JAX_COMPILATION_CACHE_DIR): the stages
    run in the tests keep it rather than each writing its own under its run directory."""
    import os

    import jax
    from rlhf_jax.stages.common import start_run
    cfg = stages.SFTConfig(run_dir=str(tmp_path / "sft"))
    assert cfg.compile_cache == "auto"
    start_run(cfg, stages.RunLayout(cfg.run_dir))
    assert jax.config.jax_compilation_cache_dir == os.environ["JAX_COMPILATION_CACHE_DIR"]
    assert not stages.RunLayout(cfg.run_dir).compile_cache.exists()


def test_the_pipeline_gives_its_stages_one_compilation_cache(tmp_path):
    from rlhf_jax.stages.pipeline import stage_configs
    layout = stages.PipelineLayout(tmp_path / "run")
    for setting, expected in (("auto", str(layout.compile_cache)), ("off", "off"),
                              ("/cache", "/cache")):
        cfg = stages.PipelineConfig(run_dir=str(layout.root), compile_cache=setting)
        assert {c.compile_cache for c in stage_configs(cfg, layout, "policy", "prefs")} == \
            {expected}
    with pytest.raises(ValueError, match="sft.compile_cache is set by the pipeline"):
        stages.PipelineConfig(sft=dataclasses.replace(stages.PipelineConfig().sft,
                                                      compile_cache="off"))
    # a run continues wherever its programs are cached
    path = tmp_path / "config.json"
    stages.record_run_config(path, {"seed": 0, "compile_cache": "auto"})
    stages.check_run_config(path, {"seed": 0, "compile_cache": "/elsewhere"})


def test_pipeline_stage_configs_for_every_method_on_rating_data(tmp_path):
    """The offline stage's config is built for every method; on rating data it must not refuse
    a PPO run (its unused method is one that reads ratings), and an offline method gets the
    reward data's rating scale and error policy."""
    from rlhf_jax.stages.pipeline import stage_configs

    data = stages.RewardData(kind="rating", rating_low=1.0, rating_high=10.0, on_error="skip")
    for method in ("ppo", "best_of_n", "awr"):
        cfg = stages.PipelineConfig(method=method, reward=stages.RewardConfig(data=data))
        *_, off = stage_configs(cfg, stages.PipelineLayout(tmp_path), "p", "prefs.jsonl")
        assert off.loss.method == "awr"
        assert (off.data.kind, off.data.rating_low, off.data.rating_high, off.data.on_error) \
            == ("rating", 1.0, 10.0, "skip")
    with pytest.raises(ValueError, match="method 'dpo' learns from pairwise"):
        stages.PipelineConfig(method="dpo", reward=stages.RewardConfig(data=data))
