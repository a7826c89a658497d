"""Experiment configs: `--config path/to/config.py` plus `--config.a.b=value` overrides.

A config file defines `get_config()` returning an `ml_collections.ConfigDict`. Overrides must name
an existing key and parse to the type of its current value; otherwise parsing stops with the key
and the expected type named.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Optional, Sequence

from ml_collections import ConfigDict


class ConfigError(ValueError):
    """A config file or override is wrong."""


def load_config_file(path) -> ConfigDict:
    """Import a config file and call its `get_config()`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    return module.get_config()


def _parse_value(key: str, text: str, current):
    expected = type(current)
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{key}={text!r}: expected a bool (true/false)")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"--config.{key}={text!r}: expected {expected.__name__}, got text that "
                          "does not parse as one") from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if current is not None and not isinstance(value, expected):
        raise ConfigError(f"--config.{key}={text!r}: expected {expected.__name__}, got "
                          f"{type(value).__name__}")
    return value


def apply_override(config: ConfigDict, key: str, text: str) -> None:
    """Set the dotted `key` from its command-line text, checking that it exists and its type."""
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ConfigDict) or part not in node:
            where = ".".join(parts[:i]) or "the top level"
            known = sorted(node.keys()) if isinstance(node, ConfigDict) else []
            raise ConfigError(f"unknown config key {key!r}: no {part!r} under {where} "
                              f"(known keys there: {', '.join(known)})")
        if i < len(parts) - 1:
            node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ConfigDict):
        raise ConfigError(f"--config.{key} names a section; set one of its keys: "
                          f"{', '.join(sorted(current.keys()))}")
    with node.unlocked():
        node[parts[-1]] = _parse_value(key, text, current)


def parse_config(argv: Sequence[str], default_path: Optional[str] = None) -> ConfigDict:
    """Build the run's config from `--config PATH` and `--config.key=value` arguments."""
    path, overrides, rest = default_path, [], []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            path, i = args[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg.startswith("--config."):
            key, sep, value = arg[len("--config."):].partition("=")
            if not sep:
                if i + 1 >= len(args):
                    raise ConfigError(f"{arg}: expected --config.{key}=VALUE")
                value, i = args[i + 1], i + 1
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    if rest:
        raise ConfigError(f"unrecognised arguments {rest}; expected --config PATH and "
                          "--config.key=value")
    if path is None:
        raise ConfigError("no config file: pass --config path/to/config.py")
    config = load_config_file(path)
    for key, value in overrides:
        apply_override(config, key, value)
    config.lock()
    return config
