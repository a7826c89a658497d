"""What the label store hands out — annotators, tasks, assignments and labels as frozen
dataclasses — the errors it raises, and the rules for ids, login tokens and a submitted label."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Optional, Sequence

from rlhf_jax.data.conversation import last_user_text, prompt_from_text

ROLES = ("annotator", "admin")


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


def hash_token(token: str) -> str:
    """SHA-256 of a login token: tokens are 256-bit random, so a plain hash suffices to store
    them (no guessing attack to slow down, unlike passwords)."""
    return hashlib.sha256(token.encode()).hexdigest()


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
