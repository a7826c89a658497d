"""Experiment configs: `--config path/to/config.py` plus `--config.a.b=value` overrides.

A config file defines `get_config()` returning an `ml_collections.ConfigDict`. Overrides must name
an existing key and parse to the type of its current value; otherwise parsing stops with the key
and the expected type named.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import math
import types
import typing
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
    if current is None:  # an optional setting: a bool word, a Python literal, or else text
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        if text.lower() in ("none", "null"):
            return None
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
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
        if isinstance(current, (list, tuple)):  # comma-separated words: q,k,v,o
            value = [t.strip() for t in text.split(",") if t.strip()]
        else:
            raise ConfigError(f"--config.{key}={text!r}: expected {expected.__name__}, got "
                              "text that does not parse as one") from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(current, list) and isinstance(value, (tuple, int)) and \
            not isinstance(value, bool):
        value = list(value) if isinstance(value, tuple) else [value]
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


def _convert(value, annotation, where: str):
    """`value` (from a ConfigDict/JSON) as the field type `annotation`."""
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
        return config_from_dict(annotation, value, where)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where) if len(inner) == 1 else value
    if origin is tuple or annotation is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r}: expected a list")
        item = args[0] if args else None
        return tuple(_convert(v, item, where) if item not in (None, Ellipsis) else v
                     for v in value)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}={value!r}: expected a mapping")
        return dict(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and not isinstance(value, annotation) or (
            annotation in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{where}={value!r}: expected {annotation.__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}={value!r}: expected a finite number")
    return value


def config_from_dict(cls, mapping, where: str = "config"):
    """Build the frozen dataclass `cls` (nested dataclasses included) from a plain mapping, such
    as `ConfigDict.to_dict()`: unknown keys, wrong types and invalid values stop with a
    `ConfigError` naming the dotted key; keys left out keep the dataclass defaults."""
    if hasattr(mapping, "to_dict"):
        mapping = mapping.to_dict()
    types_ = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    kwargs = {k: _convert(v, types_[k], f"{where}.{k}") for k, v in mapping.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def config_to_dict(config) -> dict:
    """A frozen config dataclass as a plain JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""
