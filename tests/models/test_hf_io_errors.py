"""User-caused checkpoint errors stop with a message naming the file, tensor or value."""
import json
import logging

import jax
import numpy as np
import pytest

from rlhf_jax.models import (CheckpointFormatError, CorruptCheckpointError, DecoderModel,
                             UnsupportedConfigError, init_params, load_hf_checkpoint,
                             load_tokenizer, preset, save_hf_checkpoint)
from rlhf_jax.models._safetensors import SafetensorsFile, save_safetensors
from tests.hf_reference import train_tiny_tokenizer


@pytest.fixture()
def saved(tmp_path):
    cfg = preset("tiny-llama")
    params = init_params(DecoderModel(cfg), jax.random.key(0))
    return cfg, params, save_hf_checkpoint(tmp_path / "ckpt", cfg, params)


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hf_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointFormatError, match="no config.json"):
        load_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointFormatError, match="config.json: not valid JSON"):
        load_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(UnsupportedConfigError, match="model_type='t5'"):
        load_hf_checkpoint(tmp_path)


def test_pickle_only_directory_refused(saved):
    _, _, path = saved
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(CheckpointFormatError, match="only pickle weights.*pytorch_model.bin.*"
                                                    "save_pretrained"):
        load_hf_checkpoint(path)


def test_missing_tensor_names_tensor_and_shape(saved):
    cfg, _, path = saved
    f = SafetensorsFile(path / "model.safetensors")
    tensors = {k: np.array(f.get(k)) for k in f.keys() if "layers.1.self_attn.k_proj" not in k}
    save_safetensors(str(path / "model.safetensors"), tensors, {"format": "pt"})
    with pytest.raises(CheckpointFormatError,
                       match=r"'model.layers.1.self_attn.k_proj.weight' is missing \(expected "
                             r"shape \(32, 64\)"):
        load_hf_checkpoint(path)


def test_shape_mismatch_named(saved):
    _, _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointFormatError, match=r"gate_proj.weight' has shape \(128, 64\); "
                                                    r"config.json implies \(96, 64\)"):
        load_hf_checkpoint(path)


def test_truncated_file_detected(saved):
    _, _, path = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="model.safetensors.*truncated"):
        load_hf_checkpoint(path)
    (path / "model.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(CorruptCheckpointError, match="too short"):
        load_hf_checkpoint(path)


def _rewrite_header(path, edit):
    """Replace the JSON header of a safetensors file by `edit(header)`, keeping the data bytes."""
    import struct
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    blob = json.dumps(edit(json.loads(raw[8:8 + n]))).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])


def _drop(key):
    def edit(h):
        del h["model.norm.weight"][key]
        return h
    return edit


def _set_entry(key, value):
    def edit(h):
        h["model.norm.weight"][key] = value
        return h
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda h: list(h.values()), "header must be a JSON object of tensors, got list"),
    (lambda h: {**h, "model.norm.weight": [1, 2]}, "'model.norm.weight': expected an object"),
    (_drop("shape"), "'model.norm.weight': missing shape"),
    (_drop("data_offsets"), "'model.norm.weight': missing data_offsets"),
    (_set_entry("shape", "64"), r"'model.norm.weight': shape '64' is not a list"),
    (_set_entry("shape", [True]), r"shape \[True\] is not a list of non-negative"),
    (_set_entry("shape", [-64]), r"shape \[-64\] is not a list of non-negative"),
    (_set_entry("data_offsets", ["0", "256"]), r"data_offsets \['0', '256'\] is not a list of "
                                               "two integers"),
    (_set_entry("data_offsets", [0]), r"data_offsets \[0\] is not a list of two"),
    (_set_entry("dtype", "F8_E4M3"), "unsupported dtype 'F8_E4M3'"),
    (lambda h: {**h, "__metadata__": {"format": 1}}, "__metadata__ must be an object of strings"),
])
def test_malformed_header_named(saved, edit, message):
    _, _, path = saved
    _rewrite_header(path / "model.safetensors", edit)
    with pytest.raises(CorruptCheckpointError, match="model.safetensors.*" + message):
        load_hf_checkpoint(path)


@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.uint8])
def test_non_float_weights_refused(saved, dtype):
    _, _, path = saved
    f = SafetensorsFile(path / "model.safetensors")
    tensors = {k: np.array(f.get(k)) for k in f.keys()}
    tensors["model.norm.weight"] = tensors["model.norm.weight"].astype(dtype)
    save_safetensors(str(path / "model.safetensors"), tensors, {"format": "pt"})
    with pytest.raises(CheckpointFormatError, match=f"'model.norm.weight' has dtype "
                                                    f"{np.dtype(dtype)}; weights must be floating"):
        load_hf_checkpoint(path)


def test_malformed_index_named(saved):
    _, _, path = saved
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["a"]}))
    with pytest.raises(CorruptCheckpointError, match="index.json: expected JSON with a "
                                                     "'weight_map' object"):
        load_hf_checkpoint(path)


def test_unused_tensors_warned(saved, caplog):
    _, params, path = saved
    f = SafetensorsFile(path / "model.safetensors")
    tensors = {k: np.array(f.get(k)) for k in f.keys()}
    tensors["score.weight"] = np.zeros((1, 64), np.float32)
    save_safetensors(str(path / "model.safetensors"), tensors, {"format": "pt"})
    with caplog.at_level(logging.WARNING):
        load_hf_checkpoint(path)
    assert "score.weight" in caplog.text


def test_save_refuses_to_clobber(saved):
    cfg, params, path = saved
    with pytest.raises(FileExistsError, match="not empty"):
        save_hf_checkpoint(path, cfg, params)
    bad = jax.tree.map(lambda x: x, params)
    del bad["lm_head"]
    with pytest.raises(CheckpointFormatError, match="params has no lm_head/kernel"):
        save_hf_checkpoint(path, cfg, bad, overwrite=True)
    # the failed overwrite left the previous checkpoint intact
    _, reloaded = load_hf_checkpoint(path)
    np.testing.assert_array_equal(reloaded["lm_head"]["kernel"], params["lm_head"]["kernel"])


def test_tokenizer_round_trip_and_vocab_check(saved, tmp_path):
    cfg, params, path = saved
    tok = train_tiny_tokenizer(tmp_path / "tok")
    out = save_hf_checkpoint(tmp_path / "with_tok", cfg, params, tokenizer=tok)
    loaded = load_tokenizer(out, cfg)
    assert loaded("the cat sat")["input_ids"] == tok("the cat sat")["input_ids"]
    small = cfg.replace(vocab_size=len(tok) - 1)
    with pytest.raises(CheckpointFormatError, match=f"tokenizer has {len(tok)} tokens but the "
                                                    f"model's vocab_size is {len(tok) - 1}"):
        load_tokenizer(out, small)
    with pytest.raises(CheckpointFormatError, match="no usable tokenizer"):
        load_tokenizer(path, cfg)
