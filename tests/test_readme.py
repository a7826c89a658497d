"""The README's example runs as written."""
import pathlib
import re

import pytest

pytestmark = pytest.mark.slow  # it trains a reward model and runs PPO through the stages

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    for block in blocks:  # later blocks continue the earlier ones, as a reader would
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "(2, 6, 256)" in out and "(2, 8)" in out
    assert namespace["sample"].mask.shape == (2, 8)
    assert (tmp_path / "tiny_llama_hf" / "model.safetensors").is_file()
    # the stages example: a reward model exported and PPO run against it
    assert namespace["result"].step == 20 and not namespace["result"].preempted
    assert (tmp_path / "runs" / "readme_rm" / "export" / "reward_head.safetensors").is_file()
    assert (tmp_path / "runs" / "readme_ppo" / "export" / "model.safetensors").is_file()
    assert "\n2\n" in out
