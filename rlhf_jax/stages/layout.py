"""The run-directory layout: the one place that knows where a run's files live.

A stage's run directory holds:

    config.json        the resolved stage config and its hash (see `check_run_config`)
    checkpoints/       Orbax checkpoints (unless `checkpoint.directory` points elsewhere)
    export/            the trained model (Hugging Face directory; reward models add their head)
    metrics.jsonl      one JSON line of scalars per logged step; tensorboard/ the same as events
    eval_summary.json  the reward model's held-out metrics after training
    warnings.json      the warnings the stage printed (e.g. most responses without EOS)
    samples_*.jsonl    policy samples (before/after PPO)
    reward_refreshed/  PPO with a reward-model refresh: the refreshed reward model at the end
    data/              files written for the run (built-in data, tokenised TFDS datasets)
    tokenizer/         a tokenizer trained for the run (built-in corpus)
    compile_cache/     JAX's compiled programs (`compile_cache="auto"`; see
                       `train.enable_compilation_cache`)

The end-to-end pipeline puts one such directory per stage (sft/, reward/, ppo/) under its own
root, next to data/comparisons.jsonl, eval.json, run.json, report.md, plots/ and the
compile_cache/ that all its stages share. Iterative preference learning puts one directory per
round (round0/, round1/, …: the round's samples, pairs, labels, training files, its offline/
and reward/ stage directories and summary.json) beside config.json and history.jsonl.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import jax

from rlhf_jax.train.config import ConfigError

# Keys (matched by their last dotted component) that may change between a run and its
# continuation without making it another run: how long it runs (the learning-rate schedule's
# length is recorded separately as optim.total_steps, so a schedule that depends on it still
# counts), how often it logs and saves, where it runs and what it evaluates at the end, and
# where it caches compiled programs.
RESUME_SAFE_KEYS = ("run_dir", "steps", "log_every", "allow_config_change", "save_every",
                    "keep_last", "async_save", "mesh", "sharding", "eval_samples",
                    "report_samples", "compile_cache")


class ConfigMismatchError(ConfigError):
    """A run directory already holds a run with a different config."""


def _under(*parts: str) -> property:
    """A layout path: `root / parts...`."""
    return property(lambda self: self.root.joinpath(*parts))


@dataclasses.dataclass(frozen=True)
class _Rooted:
    """A layout: paths under `root` (given as a string or a Path)."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))


@dataclasses.dataclass(frozen=True)
class RunLayout(_Rooted):
    """Paths of one stage's run directory (see the module docstring)."""

    config = _under("config.json")
    checkpoints = _under("checkpoints")
    export = _under("export")
    adapter = _under("adapter")  # LoRA runs: the adapter alone, in PEFT's format
    refreshed_reward = _under("reward_refreshed")  # PPO's reward model after its last refresh
    metrics = _under("metrics.jsonl")
    tensorboard = _under("tensorboard")
    eval_summary = _under("eval_summary.json")
    warnings = _under("warnings.json")  # what the stage warned about (settings that defeat it)
    built_data = _under("data", "built")
    tokenizer = _under("tokenizer")
    compile_cache = _under("compile_cache")

    def builtin_data(self, name: str) -> Path:
        """A data file the stage writes itself ("comparisons", "prompts", "corpus", "ptx")."""
        return self.root / "data" / f"{name}.jsonl"

    def samples(self, name: str) -> Path:
        """Samples written under `name` ("before", "after")."""
        return self.root / f"samples_{name}.jsonl"

    def read_warnings(self) -> list[str]:
        """The warnings the stage recorded (empty when there are none)."""
        return json.loads(self.warnings.read_text()) if self.warnings.is_file() else []

    def read_metrics(self) -> list[dict]:
        """The rows of metrics.jsonl (empty when there is none)."""
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines()
                if line.strip()]


@dataclasses.dataclass(frozen=True)
class RoundLayout(_Rooted):
    """Paths of one round of iterative preference learning (`IterativeLayout.round`)."""

    def stage(self, name: str) -> RunLayout:
        """The run directory of the round's stage `name` ("offline", "reward")."""
        return RunLayout(self.root / name)

    samples = _under("samples.jsonl")  # each prompt's sampled responses, with judge scores
    pairs = _under("pairs.json")  # the pairs sent for labels (kept while the app labels them)
    labels = _under("labels.jsonl")  # the round's labelled pairs
    train_file = _under("train.jsonl")  # what the round's policy learns from
    reward_file = _under("reward_train.jsonl")  # what the refreshed reward model learns from
    summary = _under("summary.json")  # written last: the round is done


@dataclasses.dataclass(frozen=True)
class IterativeLayout(_Rooted):
    """Paths of an iterative preference-learning run: its config, its per-round history and a
    `RoundLayout` per round."""

    def round(self, r: int) -> RoundLayout:
        """Round `r`'s directory (rounds count from 0)."""
        return RoundLayout(self.root / f"round{r}")

    config = _under("config.json")
    history = _under("history.jsonl")


@dataclasses.dataclass(frozen=True)
class PipelineLayout(_Rooted):
    """Paths of an end-to-end run: a `RunLayout` per stage plus the pipeline's own files."""

    def stage(self, name: str) -> RunLayout:
        """The run directory of stage `name` ("sft", "reward", "ppo")."""
        return RunLayout(self.root / name)

    config = _under("config.json")
    comparisons = _under("data", "comparisons.jsonl")
    evaluation = _under("eval.json")
    info = _under("run.json")
    report = _under("report.md")
    plots = _under("plots")
    compile_cache = _under("compile_cache")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _safe(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in RESUME_SAFE_KEYS


def config_hash(config: dict) -> str:
    """SHA-256 of the config's canonical JSON, leaving out the `RESUME_SAFE_KEYS`."""
    kept = {k: v for k, v in _flatten(config).items() if not _safe(k)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def config_differences(old: dict, new: dict, defaults: dict | None = None) -> list[str]:
    """"key: old -> new" for every differing key except the `RESUME_SAFE_KEYS`; a key the old
    config lacks (a field added since) counts only when its new value is not its default."""
    a, b, d = _flatten(old), _flatten(new), _flatten(defaults or {})
    out = []
    for k in sorted(set(a) | set(b)):
        if _safe(k) or a.get(k) == b.get(k):
            continue
        if k not in a and k in d and b.get(k) == d[k]:
            continue
        out.append(f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}")
    return out


def check_run_config(config_path, config: dict, *, allow_change: bool = False,
                     defaults: dict | None = None) -> None:
    """Refuse to continue a run directory that holds a run with a different config.

    When `config_path` exists and its config differs from `config` (ignoring
    `RESUME_SAFE_KEYS`, e.g. a larger `steps` to continue a run whose schedule does not depend on
    it; `defaults` lets fields added since the run started keep their default), stop with a
    `ConfigMismatchError` listing every differing key with its old and new value, instead of
    silently resuming the old run; `allow_change` lets the run continue with the new config.
    Nothing is written: `record_run_config` stores the config once the run has started.
    """
    path = Path(config_path)
    if not path.is_file() or allow_change:
        return
    try:
        old = json.loads(path.read_text())["config"]
        if not isinstance(old, dict):
            raise TypeError("'config' is not a mapping")
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigMismatchError(f"{path}: unreadable run config ({e}); expected JSON with "
                                  "'config' and 'hash' (move it away to start afresh)") from None
    diffs = config_differences(old, config, defaults)
    if diffs:
        raise ConfigMismatchError(
            f"{path.parent} holds a run with a different config; resuming it would mix two "
            f"runs. Differing keys: {'; '.join(diffs)}. Use another run directory, or pass "
            "--config.allow_config_change=true to continue this run with the new config")


def record_run_config(config_path, config: dict) -> None:
    """Store the run's resolved config and its hash (process 0, atomically)."""
    if jax.process_index() != 0:
        return
    write_json(config_path, {"config": config, "hash": config_hash(config)}, sort_keys=True)


def write_json(path, value, *, sort_keys: bool = False) -> None:
    """Write `value` as JSON to `path` atomically (a temporary file, then a rename), so that a
    run killed mid-write leaves the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=sort_keys))
    tmp.replace(path)
