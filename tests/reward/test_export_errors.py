"""A reward-model directory with a broken or hostile head is refused by name, like a backbone."""
import json
import shutil

import jax
import numpy as np
import pytest

from rlhf_jax.models import CheckpointFormatError, DecoderModel, init_params, preset
from rlhf_jax.models._safetensors import SafetensorsFile, save_safetensors
from rlhf_jax.reward import load_reward_model, save_reward_model
from rlhf_jax.reward.export import HEAD_FILE, HEAD_META


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    config = preset("tiny-llama")
    params = init_params(DecoderModel(config, heads=("reward",)), jax.random.key(0))
    return save_reward_model(tmp_path_factory.mktemp("rm") / "rm", config, params)


def _with_head(saved, tmp_path, edit):
    path = shutil.copytree(saved, tmp_path / "rm")
    f = SafetensorsFile(path / HEAD_FILE)
    tensors = {k: np.array(f.get(k)) for k in f.keys()}
    edit(tensors)
    save_safetensors(str(path / HEAD_FILE), tensors)
    return path


def test_saved_head_loads(saved):
    _, params, meta = load_reward_model(saved)
    assert meta["num_outputs"] == 1 and params["reward_head"]["gain"].dtype == np.float32


@pytest.mark.parametrize("name,dtype", [("proj.kernel", np.int32), ("gain", np.bool_),
                                        ("bias", np.uint8)])
def test_integer_or_bool_head_tensor_refused(saved, tmp_path, name, dtype):
    path = _with_head(saved, tmp_path, lambda t: t.update({name: t[name].astype(dtype)}))
    with pytest.raises(CheckpointFormatError, match=f"{HEAD_FILE}: tensor {name!r} has dtype "
                                                    f"{np.dtype(dtype)}; weights must be "
                                                    "floating point"):
        load_reward_model(path)


@pytest.mark.parametrize("text,match", [
    ("{not json", "not valid JSON"),
    ("[" * 100_000, r"not readable JSON \(nested deeper"),
    (json.dumps({"num_outputs": "1"}), "'num_outputs' must be a positive integer, got '1'"),
])
def test_broken_head_metadata_named(saved, tmp_path, text, match):
    path = _with_head(saved, tmp_path, lambda t: None)
    (path / HEAD_META).write_text(text)
    with pytest.raises(CheckpointFormatError, match=f"{HEAD_META}: {match}"):
        load_reward_model(path)
