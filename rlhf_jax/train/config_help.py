"""`--help` for the entry scripts: every config key with its default and a one-line description,
read from the comments next to the fields of the config dataclasses."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import re
import typing


@functools.lru_cache(maxsize=None)
def field_comments(cls) -> dict:
    """{field name: its comment} from the class source: the comment at the end of the field's
    line, else the comment lines just above it."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out, above = {}, []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"\s+(\w+)\s*:", line)
        if match and match.group(1) in names and match.group(1) not in out:
            inline = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            text = inline or " ".join(above)
            if text:
                out[match.group(1)] = text
        above = []
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            for k, v in field_comments(base).items():
                out.setdefault(k, v)
    return out


def class_summary(cls) -> str:
    """The first paragraph of a class docstring, on one line."""
    doc = inspect.getdoc(cls) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def config_help(config, prefix: str = "") -> list[str]:
    """Lines `--config.key=value  description` for every field of the config dataclass instance
    `config` (its values are the defaults shown), with a heading line per section."""
    cls = type(config)
    comments = field_comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.append(f"{key}.*: {comments.get(f.name) or class_summary(type(value))}")
            out += ["  " + line for line in config_help(value, f"{key}.")]
            continue
        shown = json.dumps(list(value) if isinstance(value, tuple) else value)
        out.append(f"--config.{key}={shown}  {comments.get(f.name, '')}".rstrip())
    return out


def missing_descriptions(cls, prefix: str = "") -> list[str]:
    """Keys of `cls` (nested) that have no description: for a test that keeps --help complete."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += missing_descriptions(hints[f.name], f"{prefix}{f.name}.")
        elif not comments.get(f.name):
            out.append(prefix + f.name)
    return out


def config_file_help(path) -> list[str]:
    """Lines `--config.key=value  description` of a config file that builds a plain ConfigDict
    (`config.key = value  # description` lines), for scripts without a config dataclass."""
    import re
    from pathlib import Path

    out = []
    for line in Path(path).read_text().splitlines():
        m = re.match(r"\s*config\.([\w.]+)\s*=\s*(.+?)\s*(?:#\s*(.*))?$", line)
        if m:
            key, value, note = m.groups()
            out.append(f"--config.{key}={value}" + (f"  {note}" if note else ""))
    return out
