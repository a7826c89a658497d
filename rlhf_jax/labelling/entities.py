"""What the label store hands out — annotators, tasks, assignments, labels and audit-log entries
as frozen dataclasses — the errors it raises, and the rules for ids, login tokens, storable text
and a submitted label."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from typing import Optional, Sequence

from rlhf_jax.data.conversation import last_user_text, prompt_from_text

ROLES = ("annotator", "admin")
_SURROGATE = re.compile("[\ud800-\udfff]")
ID_MAX = 2 ** 31 - 1  # ids are PostgreSQL INTEGERs (SQLite's reach 2^63 - 1): one range for both


class LabelError(ValueError):
    """A submission that cannot be stored as it is (the message says why)."""


class NotFound(LookupError):
    """No such assignment or label."""


class Forbidden(PermissionError):
    """The assignment or label belongs to another annotator."""


class TaskFull(LabelError):
    """The task's slots were all taken while this assignment had expired."""


@dataclasses.dataclass(frozen=True)
class Annotator:
    """A registered annotator (or admin)."""

    id: str
    role: str

    @property
    def is_admin(self) -> bool:
        """Whether they may use the admin pages."""
        return self.role == "admin"


@dataclasses.dataclass(frozen=True)
class Task:
    """Something to label: a prompt and its responses; `uid` is its id as given or hashed. A
    conversational prompt is stored as its JSON message list (`data.prompt_record_text`)."""

    id: int
    uid: str
    prompt: str
    responses: list
    meta: dict

    @property
    def conversation(self) -> Optional[list]:
        """The prompt's messages when it is a conversation, else None."""
        value = prompt_from_text(self.prompt)
        return value if isinstance(value, list) else None

    @property
    def summary(self) -> str:
        """One line of the prompt: its text, or a conversation's last user turn."""
        conversation = self.conversation
        return self.prompt if conversation is None else last_user_text(conversation)


@dataclasses.dataclass(frozen=True)
class Assignment:
    """A task shown to an annotator, with the order its responses were shown in."""

    id: int
    task: Task
    annotator_id: str
    shown_order: list  # shown_order[position] = index of the response shown there
    status: str
    shown_at: float


@dataclasses.dataclass(frozen=True)
class Label:
    """One annotator's answer to one task."""

    id: int
    task: Task
    annotator_id: str
    shown_order: list
    ranks: list  # per response (original order), 0 = best; equal ranks are ties
    ratings: list  # per response (original order): Likert value or None
    rationale: str
    shown_at: float
    submitted_at: float
    updated_at: Optional[float]


@dataclasses.dataclass(frozen=True)
class Override:
    """One entry of the audit log: who (`actor`) changed what about an annotator, when, why."""

    id: int
    annotator_id: str
    action: str  # "quarantine" | "release"
    reason: str
    actor: str
    at: float


def valid_annotator_id(value) -> bool:
    """Whether `value` may be an annotator's id: 1-64 letters, digits, '-', '_' or '.'."""
    return (isinstance(value, str) and 0 < len(value) <= 64
            and all(ch.isalnum() or ch in "-_." for ch in value))


def hash_token(token: str) -> str:
    """SHA-256 of a login or session token: tokens are 256-bit random, so a plain hash suffices
    to store them (no guessing attack to slow down, unlike passwords)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def db_id(value, what: str) -> int:
    """`value` as a row id: an int, or a string of ASCII digits, in 1..ID_MAX. Anything else
    names no row on any database, so it raises NotFound (never reaches SQL, where ids past
    the column's range fail on the driver)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= ID_MAX:
        return value
    shown = repr(value) if not isinstance(value, str) or len(value) <= 24 else \
        repr(value[:24] + "…")
    raise NotFound(f"no {what} {shown}")


def unstorable(value) -> Optional[str]:
    """Why `value` (a string, or lists and dicts of them, keys included) cannot be stored as it
    is, or None: a NUL character (PostgreSQL's text cannot hold it) or an unpaired surrogate
    (not Unicode text, so not encodable as UTF-8)."""
    if isinstance(value, dict):
        return next(filter(None, map(unstorable, [*value.keys(), *value.values()])), None)
    if isinstance(value, (list, tuple)):
        return next(filter(None, map(unstorable, value)), None)
    if not isinstance(value, str):
        return None
    if "\x00" in value:
        return f"holds a NUL character at offset {value.index(chr(0))}"
    m = _SURROGATE.search(value)
    if m:
        return f"holds an unpaired surrogate (U+{ord(m.group()):04X}) at offset {m.start()}"
    return None


def check_text(text: str, field: str) -> str:
    """`text` if a database can store it, else LabelError naming `field` (`unstorable`)."""
    why = unstorable(text)
    if why is not None:
        raise LabelError(f"{field} {why}; it cannot be stored")
    return text


def task_uid(prompt: str, responses: Sequence[str]) -> str:
    """A task's default id: a hash of its prompt and responses."""
    return hashlib.sha256(json.dumps([prompt, list(responses)]).encode()).hexdigest()[:32]


def check_label(ranks, ratings, n: int) -> tuple[list, list]:
    """Validated (ranks, ratings) for a task with `n` responses."""
    ranks = list(ranks)
    if len(ranks) != n or not all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r < n
                                  for r in ranks):
        raise LabelError(f"ranks {ranks!r}: expected {n} ints in [0, {n - 1}] (0 = best)")
    if len(set(ranks)) < 2 and n > 2:
        raise LabelError("a ranking that ties every response says nothing; skip instead")
    ratings = [None] * n if ratings is None else list(ratings)
    if len(ratings) != n or not all(
            r is None or (isinstance(r, (int, float)) and not isinstance(r, bool)
                          and math.isfinite(r)) for r in ratings):
        raise LabelError(f"ratings: expected {n} numbers or None, got {ratings!r}")
    return ranks, ratings
