"""The README's example runs as written, continued by docs/scaling.md's."""
import pathlib
import re

import pytest

pytestmark = pytest.mark.slow  # it trains a reward model and runs PPO through the stages

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "docs" / "scaling.md"]  # read in this order, as a reader goes on


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    blocks = [(page, block) for page in PAGES
              for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)]
    assert blocks and blocks[0][0] == README, "README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    for page, block in blocks:  # later blocks continue the earlier ones, as a reader would
        exec(compile(block, str(page), "exec"), namespace)
    out = capsys.readouterr().out
    assert "(2, 6, 256)" in out and "(2, 8)" in out
    assert namespace["sample"].mask.shape == (2, 8)
    assert (tmp_path / "tiny_llama_hf" / "model.safetensors").is_file()
    # the stages example: a reward model exported and PPO run against it
    assert namespace["result"].step == 20 and not namespace["result"].preempted
    assert (tmp_path / "runs" / "readme_rm" / "export" / "reward_head.safetensors").is_file()
    assert (tmp_path / "runs" / "readme_ppo" / "export" / "model.safetensors").is_file()
    assert "\n2\n" in out
