"""The offline stage as a library call: DPO learns the simulated annotators' preferences from
their comparisons alone, exports a loadable policy, and scoring the reference in the step gives
the same losses as the cached reference."""
import json

import numpy as np
import pytest

from rlhf_jax import models, offline, stages
from rlhf_jax.train import OptimizerConfig

pytestmark = pytest.mark.slow


def _cfg(run_dir, **kw):
    base = dict(run_dir=str(run_dir), steps=40, batch_size=16, log_every=1, eval_every=20,
                data=stages.OfflineData(builtin_pairs=300),
                optim=OptimizerConfig(learning_rate=1e-3, warmup_steps=10, total_steps=0))
    return stages.OfflineConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dpo")
    return run_dir, stages.train_offline(_cfg(run_dir))


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_dpo_learns_the_annotators_preferences(trained):
    run_dir, result = trained
    rows = [r for r in _rows(run_dir) if "eval/loss" in r]
    assert [r["step"] for r in rows] == [20, 40]
    # the implicit reward β·log π/π_ref orders held-out pairs as the annotators did, far above
    # chance (30 held-out pairs: chance is 0.5 ± 0.09), and the held-out loss is below
    # log 2, its value at the reference
    assert result.metrics["eval/rewards/accuracy"] >= 0.7
    assert result.metrics["eval/loss"] < np.log(2) - 0.02
    summary = json.loads((run_dir / "eval_summary.json").read_text())
    assert summary["method"] == "dpo" and summary["steps"] == 40
    assert (run_dir / "data" / "built" / "reference-train.npz").is_file()


def test_export_loads_with_its_tokenizer(trained):
    run_dir, result = trained
    config, params = models.load_hf_checkpoint(result.export_dir)
    tok = models.load_tokenizer(result.export_dir, config)
    assert len(tok) <= config.vocab_size and "lm_head" in params


def test_reference_in_the_step_gives_the_cached_losses(trained, tmp_path):
    """Three steps of the same run with the reference scored in the step: the losses of the
    cached run's first steps, to float32 rounding of log-prob sums (|Σ| ≈ 30 nats → ~1e-5)
    scaled by β, accumulated over three updates."""
    run_dir, _ = trained
    stages.train_offline(_cfg(tmp_path / "step", steps=3, eval_every=0, reference="step",
                              optim=OptimizerConfig(learning_rate=1e-3, warmup_steps=10,
                                                    total_steps=40)))  # the same schedule
    cached = [r["train/loss"] for r in _rows(run_dir) if "train/loss" in r][:3]
    step = [r["train/loss"] for r in _rows(tmp_path / "step") if "train/loss" in r]
    np.testing.assert_allclose(step, cached, rtol=1e-4)
    assert not (tmp_path / "step" / "data" / "built" / "reference-train.npz").exists()


def test_a_method_needs_the_right_records(tmp_path):
    with pytest.raises(ValueError, match="data.kind='hh': expected pairwise, ranking, binary"):
        stages.OfflineConfig(data=stages.OfflineData(kind="hh"))
    with pytest.raises(ValueError, match=r"data.kind='rating': method 'kto' learns from binary "
                                         r"\| pairwise \| ranking records"):
        stages.OfflineConfig(data=stages.OfflineData(kind="rating", train_file="r.jsonl"),
                             loss=offline.OfflineLossConfig(method="kto"))
    with pytest.raises(ValueError, match="data.kind='binary' needs data.train_file"):
        stages.OfflineConfig(data=stages.OfflineData(kind="binary"),
                             loss=offline.OfflineLossConfig(method="kto"))


def test_reference_from_another_directory(trained, tmp_path):
    """`reference_dir`: the trained policy, held still (learning rate 0), against the initial
    policy read from its own export gives the trained run's final held-out metrics, whose
    reference was that initial policy kept in memory (same data, same split, same arithmetic:
    equal to float32 rounding); the reference in the step gives them too. Against itself the
    policy's implicit reward is 0: loss log 2, margin 0."""
    run_dir, result = trained
    still = OptimizerConfig(learning_rate=0.0, warmup_steps=0, total_steps=0)
    init = stages.train_offline(_cfg(tmp_path / "init", steps=1, eval_every=0, optim=still))
    for reference in ("cached", "step"):
        again = stages.train_offline(_cfg(
            tmp_path / reference, steps=1, eval_every=0, optim=still, reference=reference,
            policy_dir=result.export_dir, reference_dir=init.export_dir))
        for key in ("eval/loss", "eval/rewards/accuracy", "eval/rewards/margin"):
            np.testing.assert_allclose(again.metrics[key], result.metrics[key], rtol=1e-4,
                                       atol=1e-6, err_msg=f"{reference}: {key}")
    itself = stages.train_offline(_cfg(tmp_path / "itself", steps=1, eval_every=0, optim=still,
                                       policy_dir=result.export_dir,
                                       reference_dir=result.export_dir))
    assert abs(itself.metrics["eval/loss"] - np.log(2)) < 1e-6
    assert itself.metrics["eval/rewards/margin"] == 0.0


def test_reference_from_another_directory_under_an_int8_lora_policy(trained, tmp_path):
    """`reference_dir` under LoRA over an int8 base: the reference is read with its own plain
    config (float weights, no adapters), not with the policy's int8 one. The trained policy
    held still against the initial policy gives the full run's held-out metrics to within the
    int8 rounding of its base (adapters start at zero), cached and in the step alike; against
    its own float export, the only difference left is that rounding."""
    run_dir, result = trained
    still = OptimizerConfig(learning_rate=0.0, warmup_steps=0, total_steps=0)
    init = stages.train_offline(_cfg(tmp_path / "init", steps=1, eval_every=0, optim=still))
    lora = models.LoraConfig(rank=4, quantize_base="int8")
    for reference in ("cached", "step"):
        again = stages.train_offline(_cfg(
            tmp_path / reference, steps=1, eval_every=0, optim=still, reference=reference,
            lora=lora, policy_dir=result.export_dir, reference_dir=init.export_dir))
        for key in ("eval/loss", "eval/rewards/margin"):
            np.testing.assert_allclose(again.metrics[key], result.metrics[key], rtol=1e-3,
                                       err_msg=f"{reference}: {key}")
    itself = stages.train_offline(_cfg(tmp_path / "itself", steps=1, eval_every=0, optim=still,
                                       lora=lora, policy_dir=result.export_dir,
                                       reference_dir=result.export_dir))
    assert 0 < abs(itself.metrics["eval/loss"] - np.log(2)) < 1e-2


def test_reference_of_another_architecture_is_refused(trained, tmp_path):
    from tests.chat_tokenizers import make_chat_model

    _, result = trained
    make_chat_model(tmp_path / "llama")
    with pytest.raises(models.CheckpointFormatError,
                       match=r"reference_dir='.*llama' is another architecture .*vocab_size"):
        stages.train_offline(_cfg(tmp_path / "run", steps=1, eval_every=0,
                                  optim=OptimizerConfig(warmup_steps=0, total_steps=0),
                                  policy_dir=result.export_dir,
                                  reference_dir=str(tmp_path / "llama")))
