"""LoRA through the stages: SFT, reward modelling, PPO and DPO train only adapters (and added
heads) with the base frozen bit for bit, export a merged plain model equal to base + adapters,
and write the adapter alone in PEFT's format."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from rlhf_jax import models, ppo, stages
from rlhf_jax.checkpoint import CheckpointConfig
from rlhf_jax.train import OptimizerConfig

pytestmark = pytest.mark.slow

LORA = models.LoraConfig(rank=4, alpha=8.0, targets=("q", "k", "v", "o", "gate", "up", "down"))


def _restored_params(run_dir):
    """The newest checkpoint's parameters (read whole, without a restore target)."""
    import orbax.checkpoint as ocp
    root = run_dir / "checkpoints"
    step = max(int(p.name) for p in root.iterdir() if p.name.isdigit())
    return ocp.StandardCheckpointer().restore((root / str(step) / "state").resolve())["params"]


def _base_unchanged(initial, final):
    """Every base leaf equal bit for bit; at least one adapter B moved away from 0."""
    moved = 0
    for (path, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(initial)[0],
                                 jax.tree_util.tree_flatten_with_path(final)[0]):
        name = str(path[-1].key)
        if name in ("lora_a", "lora_b"):
            moved += name == "lora_b" and bool(np.any(np.asarray(b) != 0))
        elif "transformer" in str(path[0].key) or "lm_head" in str(path[0].key):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
    assert moved > 0


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("sft_base")
    stages.train_sft(stages.SFTConfig(run_dir=str(base), steps=30, batch_size=16,
                                      data=stages.SFTData(source="text")))
    run = tmp_path_factory.mktemp("sft_lora")
    result = stages.train_sft(stages.SFTConfig(
        run_dir=str(run), model_dir=str(base / "export"), steps=20, batch_size=16, lora=LORA,
        data=stages.SFTData(source="text"),
        checkpoint=CheckpointConfig(save_every=20, keep_last=1),
        optim=OptimizerConfig(learning_rate=1e-2, total_steps=0)))
    return base, run, result


def test_sft_lora_trains_adapters_only_and_exports_merged_and_peft(sft_run):
    base, run, result = sft_run
    config, base_params = models.load_hf_checkpoint(base / "export")
    final = _restored_params(run)
    _base_unchanged(models.add_adapters(base_params, models.adapter_params(final)), final)
    # the adapter directory is PEFT's format and loads back onto the base
    saved = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 4 and saved["peft_type"] == "LORA"
    acfg, aparams = models.load_peft_adapter(run / "adapter", config, base_params)
    # the merged export equals base + adapters
    mcfg, merged = models.load_hf_checkpoint(result.export_dir)
    assert not mcfg.lora.enabled
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 12))
    adapted = models.DecoderModel(acfg).apply({"params": aparams}, tokens).logits
    plain = models.DecoderModel(mcfg).apply({"params": merged}, tokens).logits
    untouched = models.DecoderModel(config).apply({"params": base_params}, tokens).logits
    np.testing.assert_allclose(np.asarray(adapted), np.asarray(plain), atol=1e-4)
    assert np.abs(np.asarray(adapted) - np.asarray(untouched)).max() > 1e-3
    # SFT with adapters lowered the loss
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < losses[0]


@pytest.fixture(scope="module")
def reward_run(sft_run, tmp_path_factory):
    base, _, _ = sft_run
    run = tmp_path_factory.mktemp("rm_lora")
    result = stages.train_reward_model(stages.RewardConfig(
        run_dir=str(run), model_dir=str(base / "export"), steps=60, batch_size=16, lora=LORA,
        eval_every=30, data=stages.RewardData(builtin_pairs=400),
        optim=OptimizerConfig(learning_rate=3e-3, total_steps=0),
        checkpoint=CheckpointConfig(save_every=60, keep_last=1)))
    return base, run, result


def test_reward_lora_learns_with_a_frozen_backbone(reward_run):
    base, run, result = reward_run
    _, base_params = models.load_hf_checkpoint(base / "export")
    final = _restored_params(run)
    initial = {"transformer": models.add_adapters(
        base_params["transformer"], models.adapter_params(final["transformer"]))}
    _base_unchanged(initial, {"transformer": final["transformer"]})
    # 60 held-out pairs: chance is 0.5 ± 0.065; the head and adapters learn the preferences
    assert result.metrics["eval/accuracy"] >= 0.7
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "export" / "reward_head.json").is_file()


@pytest.mark.parametrize("saved", [(), ("lm_head",)])
def test_ppo_lora_reference_is_the_base(sft_run, reward_run, tmp_path, saved):
    """The reference is the policy's own base with adapters off (and, with the LM head trained
    in full, the head's initial copy): the first rollout's KL is 0."""
    base, _, _ = sft_run
    _, rm_run, _ = reward_run
    run = tmp_path / "ppo"
    result = stages.train_ppo(stages.PPOStageConfig(
        run_dir=str(run), policy_dir=str(base / "export"), reward_dir=str(rm_run / "export"),
        steps=3, batch_size=8, eval_prompts=8, log_every=1,
        lora=dataclasses.replace(LORA, modules_to_save=saved),
        ppo=ppo.PPOConfig(num_minibatches=2),
        optim=OptimizerConfig(learning_rate=1e-3, total_steps=0, schedule="constant"),
        checkpoint=CheckpointConfig(save_every=3, keep_last=1)))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # the first rollout's policy is the base exactly (B = 0), so its KL to the reference is 0
    # up to float32 rounding of two identical forward passes
    assert abs(rows[0]["kl/sequence"]) < 1e-4
    assert max(abs(r["kl/sequence"]) for r in rows) > 1e-4  # the adapters moved the policy
    _, base_params = models.load_hf_checkpoint(base / "export")
    final = _restored_params(run)
    policy = {k: v for k, v in final["policy"].items() if k not in ("value_head",) + saved}
    _base_unchanged(models.add_adapters({k: v for k, v in base_params.items()
                                         if k not in saved},
                                        models.adapter_params(final["policy"])), policy)
    if saved:  # the head trained
        assert np.abs(np.asarray(final["policy"]["lm_head"]["kernel"]) -
                      np.asarray(base_params["lm_head"]["kernel"])).max() > 1e-4
    critic = final["critic"]["transformer"]
    assert models.adapter_params(critic)  # the critic trains adapters (critic_lora default)
    assert (run / "adapter" / "adapter_config.json").is_file() and result.export_dir


@pytest.mark.parametrize("saved", [(), ("lm_head",)])
def test_dpo_lora_cached_and_step_references_agree(sft_run, tmp_path, saved):
    """With the LM head trained in full too, the step's reference lays the head's initial copy
    over the policy's base; the cache was computed from the initial weights."""
    base, _, _ = sft_run
    out = {}
    lora = dataclasses.replace(LORA, modules_to_save=saved)
    for ref in ("cached", "step"):
        run = tmp_path / ref
        out[ref] = stages.train_offline(stages.OfflineConfig(
            run_dir=str(run), policy_dir=str(base / "export"), steps=4, batch_size=16,
            eval_every=0, log_every=1, reference=ref, lora=lora,
            data=stages.OfflineData(builtin_pairs=200),
            optim=OptimizerConfig(learning_rate=1e-3, total_steps=0)))
        out[ref] = [json.loads(x)["train/loss"] for x in
                    (run / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    # the same reference (the base with adapters off) read from a cache or in the step: equal
    # to float32 rounding of the log-prob sums, scaled by β over four updates
    np.testing.assert_allclose(out["cached"], out["step"], atol=1e-4)
    assert out["cached"][0] == pytest.approx(np.log(2), abs=1e-4)  # policy = reference at 0
