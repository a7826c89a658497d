"""Config files and overrides with precise errors; metric writers and progress output."""
import io
import json

import pytest

from rlhf_jax.train import ConfigError, MetricWriter, Progress, parse_config

CONFIG = '''
from ml_collections import ConfigDict
def get_config():
    c = ConfigDict()
    c.steps = 10
    c.lr = 0.1
    c.name = "run"
    c.flag = False
    c.sizes = (1, 2)
    c.optim = ConfigDict(dict(b1=0.9, schedule="cosine"))
    return c
'''


@pytest.fixture()
def cfg_file(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(CONFIG)
    return str(path)


def test_overrides_parse_to_the_field_type(cfg_file):
    c = parse_config(["--config", cfg_file, "--config.steps=20", "--config.lr=1",
                      "--config.flag=true", "--config.optim.b1=0.95", "--config.name", "x=y",
                      "--config.sizes=[3, 4]"])
    assert (c.steps, c.lr, c.flag, c.optim.b1, c.name, c.sizes) == (20, 1.0, True, 0.95, "x=y",
                                                                    (3, 4))
    assert isinstance(c.lr, float)


@pytest.mark.parametrize("arg,match", [
    ("--config.stpes=3", r"unknown config key 'stpes'.*known keys there: flag, lr, name"),
    ("--config.optim.beta=3", r"unknown config key 'optim.beta': no 'beta' under optim"),
    ("--config.steps=ten", r"--config.steps='ten': expected int"),
    ("--config.steps=1.5", r"--config.steps='1.5': expected int, got float"),
    ("--config.flag=maybe", r"expected a bool"),
    ("--config.optim=3", r"names a section"),
])
def test_bad_overrides_name_key_and_type(cfg_file, arg, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(["--config", cfg_file, arg])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.py does not exist"):
        parse_config(["--config", str(tmp_path / "nope.py")])
    with pytest.raises(ConfigError, match="unrecognised arguments"):
        parse_config(["--steps=3"], str(tmp_path / "nope.py"))


def test_config_is_locked_after_parsing(cfg_file):
    c = parse_config(["--config", cfg_file])
    with pytest.raises(AttributeError):
        c.new_key = 1


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
    w = MetricWriter(tmp_path / "metrics.jsonl", tmp_path / "tensorboard")
    w.write(1, {"train/loss": 2.5, "kl/mean": float("nan")})
    w.write(2, {"train/loss": 2.0})
    w.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "train/loss": 2.5, "kl/mean": None},
                     {"step": 2, "train/loss": 2.0}]
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert b"train/loss" in events[0].read_bytes()


def test_metric_writer_resume_drops_rows_after_the_restored_step(tmp_path):
    w = MetricWriter(tmp_path / "metrics.jsonl", tmp_path / "tb")
    for step in range(1, 8):
        w.write(step, {"train/loss": float(step)})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "train/lo')  # a line torn by SIGKILL
    w = MetricWriter(tmp_path / "metrics.jsonl", tmp_path / "tb", resume_step=4)
    w.write(5, {"train/loss": 50.0})
    w.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[-1]["train/loss"] == 50.0
    # TensorBoard is told to hide the stale steps: a SessionLog START at step 5 in the new file
    from tensorboardX.proto import event_pb2
    newest = sorted((tmp_path / "tb").glob("events.out.tfevents.*"),
                    key=lambda p: p.stat().st_mtime)[-1]
    events = _read_events(newest, event_pb2)
    assert any(e.HasField("session_log") and e.session_log.status == 1 and e.step == 5
               for e in events)


def _read_events(path, event_pb2):
    """Parse a TFRecord file of Event protos (length, crc, data, crc)."""
    import struct
    data, out, i = path.read_bytes(), [], 0
    while i + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        e = event_pb2.Event()
        e.ParseFromString(data[i + 12:i + 12 + n])
        out.append(e)
        i += 12 + n + 4
    return out


def test_progress_plain_lines_off_terminal():
    out = io.StringIO()
    p = Progress(10, 0, ("train/loss",), stream=out)
    p.update(5, {"train/loss": 1.23456})
    p.close()
    assert out.getvalue().strip() == "step 5 train/loss=1.235"  # the namespace is kept


def test_overrides_of_optional_and_list_settings(tmp_path):
    cfg_file = tmp_path / "c.py"
    cfg_file.write_text("from ml_collections import ConfigDict\n"
                        "def get_config():\n"
                        "    return ConfigDict({'whiten': None, 'eos': [], 'clip': None})\n")
    c = parse_config(["--config", str(cfg_file), "--config.whiten=false", "--config.eos=5,6",
                      "--config.clip=0.5"])
    assert c.whiten is False and c.eos == [5, 6] and c.clip == 0.5
    assert parse_config(["--config", str(cfg_file), "--config.eos=7"]).eos == [7]
