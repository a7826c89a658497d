"""A constitution: written principles that AI feedback judges by (Bai et al. 2022, "Constitutional
AI", §3 and appendix C).

A file (TOML, JSON or YAML) holds `mode` ("sample": each comparison is judged by one principle
drawn by weight, as in Bai et al.; "weighted": the weighted mean of every principle's
probability) and a list `principles`, each with

- `id`: a short unique name (letters, digits, `-`, `_`);
- `question`: the judging question, e.g. "Which response is more helpful and polite?";
- `critique` and `revision` (optional): the requests used by critique–revision (SL-CAI);
- `judge` (optional, default "lm"): "lm" (the language-model judge) or the name of a packaged
  classifier judge (`rlhf_jax.rlaif.judges.CLASSIFIERS`);
- `weight` (optional, default 1): its share in sampling or in the weighted mean.

    mode = "sample"
    [[principles]]
    id = "positive"
    question = "Which response is more positive?"
    critique = "Say what is negative or unpleasant in the response."
    revision = "Rewrite the response to be positive."
    judge = "vader"
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

MODES = ("sample", "weighted")
FIELDS = ("id", "question", "critique", "revision", "judge", "weight")


class ConstitutionError(ValueError):
    """A constitution file is malformed (the message names the file, principle and field)."""


@dataclasses.dataclass(frozen=True)
class Principle:
    """One principle: what to ask a judge, and how to critique and revise against it."""

    id: str
    question: str
    critique: str = ""
    revision: str = ""
    judge: str = "lm"
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class Constitution:
    """Principles and how a comparison combines them."""

    principles: tuple
    mode: str = "sample"

    def weights(self):
        total = sum(p.weight for p in self.principles)
        return [p.weight / total for p in self.principles]

    def principle(self, pid: str) -> Principle:
        for p in self.principles:
            if p.id == pid:
                return p
        raise KeyError(f"no principle {pid!r} (have {[p.id for p in self.principles]})")


def _read(path: Path) -> object:
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib
            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
        if suffix in (".yaml", ".yml"):
            import yaml
            return yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - every parser's own error type
        raise ConstitutionError(f"{path}: not valid {suffix[1:].upper()}: {e}") from None
    raise ConstitutionError(f"{path}: expected a .toml, .json, .yaml or .yml file")


def parse_constitution(raw: object, where: str = "constitution",
                       known_judges=None) -> Constitution:
    """A validated `Constitution` from parsed data; `known_judges` (names) checks `judge`."""
    if not isinstance(raw, dict):
        raise ConstitutionError(f"{where}: expected a table/object with 'principles'")
    unknown = sorted(set(raw) - {"mode", "principles"})
    if unknown:
        raise ConstitutionError(f"{where}: unknown key(s) {unknown}; expected 'mode' and "
                                "'principles'")
    mode = raw.get("mode", "sample")
    if mode not in MODES:
        raise ConstitutionError(f"{where}: mode={mode!r}: expected one of {MODES}")
    items = raw.get("principles")
    if not isinstance(items, list) or not items:
        raise ConstitutionError(f"{where}: 'principles' must be a non-empty list")
    out, seen = [], set()
    for i, item in enumerate(items):
        name = item.get("id") if isinstance(item, dict) else None
        at = f"{where}: principle {i + 1}" + (f" ({name!r})" if isinstance(name, str) else "")
        if not isinstance(item, dict):
            raise ConstitutionError(f"{at}: expected a table/object")
        extra = sorted(set(item) - set(FIELDS))
        if extra:
            raise ConstitutionError(f"{at}: unknown field(s) {extra}; expected some of "
                                    f"{list(FIELDS)}")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise ConstitutionError(f"{at}: field 'id' must be 1-64 letters, digits, '-' or '_'")
        if name in seen:
            raise ConstitutionError(f"{at}: field 'id' repeats an earlier principle's id")
        seen.add(name)
        for field in ("question", "critique", "revision", "judge"):
            v = item.get(field, "")
            if not isinstance(v, str):
                raise ConstitutionError(f"{at}: field {field!r} must be a string")
        if not item.get("question", "").strip():
            raise ConstitutionError(f"{at}: field 'question' is missing or empty")
        if bool(item.get("critique", "").strip()) != bool(item.get("revision", "").strip()):
            raise ConstitutionError(f"{at}: fields 'critique' and 'revision' go together: give "
                                    "both or neither")
        judge = item.get("judge", "lm") or "lm"
        if known_judges is not None and judge != "lm" and judge not in known_judges:
            raise ConstitutionError(f"{at}: field 'judge'={judge!r}: expected 'lm' or one of "
                                    f"{sorted(known_judges)}")
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or \
                not math.isfinite(weight) or weight <= 0:
            raise ConstitutionError(f"{at}: field 'weight'={weight!r}: expected a number > 0")
        out.append(Principle(name, item["question"].strip(), item.get("critique", "").strip(),
                             item.get("revision", "").strip(), judge, float(weight)))
    return Constitution(tuple(out), mode)


def load_constitution(path, known_judges=None) -> Constitution:
    """Read and validate a constitution file (TOML, JSON or YAML; see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ConstitutionError(f"{path}: constitution file does not exist")
    return parse_constitution(_read(path), str(path), known_judges)
