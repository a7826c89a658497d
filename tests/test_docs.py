"""The README and docs/ hold: every link resolves inside the repository, and every command in
their shell blocks parses against its script's config (keys and types), as the script would."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_jax import labelling, stages, studies, train

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_docs_pages_exist():
    names = {p.name for p in PAGES}
    assert {"design.md", "data.md", "stages.md", "offline.md", "studies.md", "labelling.md",
            "audit.md", "scaling.md"} <= names
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves_inside_the_repository(page):
    text = page.read_text()
    assert "../shared" not in text and "DESIGN.md" not in text
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{page.name}: {target} points outside"
        assert path.exists(), f"{page.name}: {target} does not exist"


def _commands():
    """(page, script, args) of every `python experiments/...` line of a shell block."""
    out = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.split("#")[0]
                m = re.search(r"python (experiments/\w+\.py)(.*)", line)
                if m:
                    args = [a for a in shlex.split(m.group(2)) if not a.startswith((">", "2>"))]
                    out.append((page.name, m.group(1), args))
    return out


COMMANDS = _commands()


def _stage_of(script: str):
    """(config class, default config file) of a script built on `stages.run_script`."""
    src = (ROOT / script).read_text()
    m = re.search(r"run_script\([^,]+, (stages|studies|labelling)\.(\w+), argv,\s*DEFAULT\)",
                  src)
    if not m:
        return None
    default = re.search(r'"configs", "(\w+\.py)"', src).group(1)
    return getattr({"stages": stages, "studies": studies,
                    "labelling": labelling}[m.group(1)], m.group(2)), \
        ROOT / "experiments" / "configs" / default


def test_there_are_commands_for_every_area():
    scripts = {s for _, s, _ in COMMANDS}
    assert {"experiments/rlhf_pipeline.py", "experiments/train_offline.py",
            "experiments/evaluate.py", "experiments/compare_methods.py",
            "experiments/label_server.py", "experiments/audit_reward.py"} <= scripts


@pytest.mark.parametrize("page,script,args", COMMANDS,
                         ids=[f"{p}:{s.split('/')[-1]}:{i}" for i, (p, s, _) in
                              enumerate(COMMANDS)])
def test_every_command_parses(page, script, args):
    assert (ROOT / script).is_file(), f"{page}: {script} does not exist"
    found = _stage_of(script)
    if found is None:  # its own argument parser: it must answer --help
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        r = subprocess.run([sys.executable, str(ROOT / script), *args, "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        return
    config_cls, default = found
    args = ["--config.quick=True" if a == "--quick" else a for a in args]
    overrides = [a for a in args if a.startswith("--config.")]
    assert overrides == args, f"{page}: {script}: not a --config.KEY=VALUE argument in {args}"
    cfg = train.config_from_dict(config_cls, train.parse_config(overrides, str(default)))
    assert isinstance(cfg, config_cls)


SCRIPTS = sorted((ROOT / "experiments").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_answers_help_describing_every_key(script):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    r = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    keys = [line.strip() for line in r.stdout.splitlines()
            if line.strip().startswith("--config.")]
    assert keys, f"{script.name}: --help lists no --config keys"
    bare = [k for k in keys if not re.match(r"--config\.\S+=.*\S  +\S", k)]
    assert not bare, f"{script.name}: keys without a description: {bare[:5]}"
