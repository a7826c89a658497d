"""The entry shell: `--quick` means the same on every script with a quick mode and is refused on
the others; user errors are one line with status 2."""
import dataclasses

import pytest

from rlhf_jax import stages


@dataclasses.dataclass(frozen=True)
class Quick:
    """A study with a quick mode."""

    quick: bool = False  # tiny budgets
    steps: int = 10  # steps


@dataclasses.dataclass(frozen=True)
class Plain:
    """A stage without one."""

    steps: int = 10  # steps


def _default(tmp_path, fields):
    path = tmp_path / "config.py"
    path.write_text("from ml_collections import ConfigDict\n\n\ndef get_config():\n"
                    f"    return ConfigDict({fields!r})\n")
    return str(path)


def test_quick_everywhere_it_exists(tmp_path, capsys):
    got = stages.run_script(lambda c: c, Quick, ["--quick", "--config.steps=3"],
                            _default(tmp_path, {"quick": False, "steps": 10}))
    assert got == Quick(quick=True, steps=3)
    with pytest.raises(SystemExit) as e:
        stages.run_script(lambda c: c, Plain, ["--quick"], _default(tmp_path, {"steps": 10}))
    assert e.value.code == 2
    assert "error: --quick: this script (Plain) has no quick mode" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        stages.run_script(lambda c: c, Plain, ["--config.stpes=3"],
                          _default(tmp_path, {"steps": 10}))
    assert e.value.code == 2 and "unknown config key 'stpes'" in capsys.readouterr().err
