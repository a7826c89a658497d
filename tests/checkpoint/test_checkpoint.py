"""Checkpoints: mesh-changing restore (8 → 2 → 1 devices), keep-last/best, corrupt fallback."""
import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from rlhf_jax.checkpoint import CheckpointConfig, Checkpointer, NoReadableCheckpointError
from rlhf_jax.models import DecoderModel, init_params, logical_axes, preset
from rlhf_jax.sharding import logical_rules, make_mesh, param_shardings
from rlhf_jax.train import OptimizerConfig, create_train_state, make_optimizer
from rlhf_jax.train import compile_init


def _state_on(mesh_spec, devices):
    model = DecoderModel(preset("tiny-llama"))
    mesh, rules = make_mesh(mesh_spec, devices=devices), logical_rules("fsdp")
    params = init_params(model, jax.random.key(0))
    params = jax.device_put(params, param_shardings(params, logical_axes(model), mesh, rules))
    tx = make_optimizer(OptimizerConfig(weight_decay=0.1, total_steps=10), params)
    return compile_init(lambda p: create_train_state(p, tx, 3), params)


def test_save_on_8_devices_restore_on_2_then_1(tmp_path):
    abstract8, init8 = _state_on("fsdp=8", jax.devices())
    state = init8()
    emb = state.params["transformer"]["wte"]["embedding"]
    assert len({s.device for s in emb.addressable_shards}) == 8
    ck = Checkpointer(CheckpointConfig(str(tmp_path), async_save=True))
    ck.save(5, state, data_state={"next_index": 40}, config={"lr": 0.1})
    ck.wait()
    for n in (2, 1):
        abstract, _ = _state_on(f"fsdp={n}", jax.devices()[:n])
        restored = Checkpointer(CheckpointConfig(str(tmp_path))).restore(abstract)
        assert restored.step == 5 and restored.data_state == {"next_index": 40}
        assert restored.config == {"lr": 0.1}
        got = restored.state.params["transformer"]["wte"]["embedding"]
        assert len({s.device for s in got.addressable_shards}) == n
        for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _tiny_state(value):
    return {"w": np.full((4,), value, np.float32), "step": np.int32(value)}


def _abstract():
    sh = NamedSharding(make_mesh("data=1", devices=jax.devices()[:1]), PartitionSpec())
    return {"w": jax.ShapeDtypeStruct((4,), np.float32, sharding=sh),
            "step": jax.ShapeDtypeStruct((), np.int32, sharding=sh)}


def test_keep_last_and_best(tmp_path):
    ck = Checkpointer(CheckpointConfig(str(tmp_path), save_every=1, keep_last=2, keep_best=1,
                                       best_metric="eval/loss", best_mode="min",
                                       async_save=False))
    losses = {1: 3.0, 2: 0.5, 3: 2.0, 4: 2.5, 5: 1.5, 6: 4.0}
    for step, loss in losses.items():
        ck.save(step, _tiny_state(step), metrics={"eval/loss": loss})
    ck.wait()
    assert ck.steps() == [2, 5, 6]  # best (step 2) plus the last two
    assert ck.restore(_abstract(), step=2).state["step"] == 2


def test_corrupt_latest_falls_back_with_warning(tmp_path, caplog):
    ck = Checkpointer(CheckpointConfig(str(tmp_path), async_save=False))
    ck.save(10, _tiny_state(10))
    ck.save(20, _tiny_state(20))
    ck.wait()
    for root, _, files in os.walk(tmp_path / "20" / "state"):
        for f in files:
            with open(os.path.join(root, f), "r+b") as fh:
                fh.truncate(3)
    with caplog.at_level(logging.WARNING):
        restored = Checkpointer(CheckpointConfig(str(tmp_path))).restore(_abstract())
    assert restored.step == 10 and float(restored.state["w"][0]) == 10
    assert "checkpoint step 20" in caplog.text and "falling back to step 10" in caplog.text


def test_nothing_readable_and_empty(tmp_path, caplog):
    assert Checkpointer(CheckpointConfig(str(tmp_path / "empty"))).restore(_abstract()) is None
    ck = Checkpointer(CheckpointConfig(str(tmp_path / "bad"), async_save=False))
    ck.save(1, _tiny_state(1))
    ck.wait()
    for root, _, files in os.walk(tmp_path / "bad" / "1"):
        for f in files:
            os.remove(os.path.join(root, f))
    # the only step lost its files: moved aside (kept), and the run starts afresh
    with caplog.at_level(logging.WARNING):
        assert Checkpointer(CheckpointConfig(str(tmp_path / "bad"))).restore(_abstract()) is None
    assert "starting from scratch" in caplog.text
    assert [p.name[:2] for p in (tmp_path / "bad" / "damaged").iterdir()] == ["1-"]


def test_step_that_does_not_fit_the_run_is_kept_and_named(tmp_path, caplog):
    ck = Checkpointer(CheckpointConfig(str(tmp_path), async_save=False))
    ck.save(1, _tiny_state(1))
    ck.close()
    other = dict(_abstract(), w=jax.ShapeDtypeStruct((5,), np.float32,
                                                     sharding=_abstract()["w"].sharding))
    ck = Checkpointer(CheckpointConfig(str(tmp_path), async_save=False))
    with pytest.raises(NoReadableCheckpointError, match="step 1"):
        ck.restore(other)
    assert ck.steps() == [1] and not (tmp_path / "damaged").exists()  # another run's: kept
    with caplog.at_level(logging.WARNING):
        assert not ck.save(1, _tiny_state(1))
    assert "did not restore into this run; it is kept and this save of step 1 is skipped" \
        in caplog.text
    ck.close()


@pytest.mark.parametrize("loss", ["every_file", "whole_directory", "manifest_and_metadata"])
def test_step_that_lost_its_files_is_moved_aside_and_saved_again(tmp_path, caplog, loss):
    """A step without integrity.json that no longer restores counts as damaged: it used to be
    left in place, so that the run's final save of that step was skipped silently and the
    newest checkpoint stayed unreadable."""
    step20 = _two_steps(tmp_path)
    if loss == "every_file":
        for path in [p for p in step20.rglob("*") if p.is_file()]:
            path.unlink()
    elif loss == "whole_directory":
        shutil.rmtree(step20)
        step20.mkdir()
    else:
        (step20 / "integrity.json").unlink()
        (step20 / "config" / "metadata").unlink()
    with caplog.at_level(logging.WARNING):
        ck = Checkpointer(CheckpointConfig(str(tmp_path), async_save=False))
        restored = ck.restore(_abstract())
    assert restored.step == 10 and restored.data_state == {"next_index": 10}
    moved = list((tmp_path / "damaged").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("20-")
    assert f"checkpoint step 20 in {tmp_path} is unreadable" in caplog.text
    assert f"moved to {moved[0]}; falling back to step 10" in caplog.text
    assert ck.steps() == [10]
    assert ck.save(20, _tiny_state(21))
    ck.close()
    again = Checkpointer(CheckpointConfig(str(tmp_path))).restore(_abstract())
    assert again.step == 20 and float(again.state["w"][0]) == 21


def test_half_written_checkpoint_is_ignored(tmp_path):
    ck = Checkpointer(CheckpointConfig(str(tmp_path), async_save=False))
    ck.save(3, _tiny_state(3))
    ck.wait()
    # what a save killed mid-way leaves behind: an unfinalised temporary step directory
    (tmp_path / "7.orbax-checkpoint-tmp-123").mkdir()
    (tmp_path / "7.orbax-checkpoint-tmp-123" / "partial").write_text("x")
    restored = Checkpointer(CheckpointConfig(str(tmp_path))).restore(_abstract())
    assert restored.step == 3


def test_config_validation():
    with pytest.raises(ValueError, match="needs best_metric"):
        CheckpointConfig("x", keep_best=2)


def _two_steps(tmp_path, async_save=False):
    ck = Checkpointer(CheckpointConfig(str(tmp_path), async_save=async_save))
    ck.save(10, _tiny_state(10), data_state={"next_index": 10})
    ck.save(20, _tiny_state(20), data_state={"next_index": 20})
    ck.close()
    return tmp_path / "20"


def _flip_one_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("async_save", [False, True])
def test_every_finished_step_is_sealed(tmp_path, async_save):
    step20 = _two_steps(tmp_path, async_save)
    manifest = json.loads((step20 / "integrity.json").read_text())
    assert manifest["algorithm"] == "sha256"
    assert any(name.startswith("state/") for name in manifest["files"])
    assert "data/metadata" in manifest["files"]


@pytest.mark.parametrize("damage", ["bit_flip_in_array_file", "valid_but_wrong_json"])
def test_damaged_step_is_detected_moved_aside_and_replaced(tmp_path, caplog, damage):
    step20 = _two_steps(tmp_path)
    if damage == "bit_flip_in_array_file":
        # the largest file under state/ holds the array bytes (OCDBT data file)
        target = max((p for p in (step20 / "state").rglob("*") if p.is_file()),
                     key=lambda p: p.stat().st_size)
        _flip_one_bit(target)
    else:  # parses, restores without complaint, but would resume the data at the wrong place
        (step20 / "data" / "metadata").write_text(json.dumps({"next_index": 99}))
    with caplog.at_level(logging.WARNING):
        ck = Checkpointer(CheckpointConfig(str(tmp_path), async_save=False))
        restored = ck.restore(_abstract())
    assert restored.step == 10 and restored.data_state == {"next_index": 10}
    assert "checkpoint step 20" in caplog.text and "falling back to step 10" in caplog.text
    moved = list((tmp_path / "damaged").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("20-")
    assert ck.steps() == [10]
    assert ck.save(20, _tiny_state(21))  # the step number is free again
    ck.close()
    assert Checkpointer(CheckpointConfig(str(tmp_path))).restore(_abstract()).step == 20


def test_keep_best_survives_a_restart(tmp_path):
    cfg = CheckpointConfig(str(tmp_path), save_every=1, keep_last=1, keep_best=1,
                           best_metric="eval/accuracy", best_mode="max", async_save=False)
    ck = Checkpointer(cfg)
    for step, acc in [(1, 0.5), (2, 0.9), (3, 0.6)]:
        ck.save(step, _tiny_state(step), metrics={"eval/accuracy": acc})
    ck.close()
    ck = Checkpointer(cfg)
    ck.save(4, _tiny_state(4), metrics={"eval/accuracy": 0.7})
    ck.close()
    assert Checkpointer(cfg).steps() == [2, 4]  # the best (step 2) and the last
