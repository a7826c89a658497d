"""The label store: annotators, tasks, assignments and labels behind one SQLAlchemy URL.

The tables and the engine are `labelling.database`'s (SQLite with a WAL journal by default,
PostgreSQL by URL); what the store hands out is `labelling.entities`'. Every statement is
parameterised through SQLAlchemy Core. Each write is one transaction, committed before the
caller returns, so a label the web app has acknowledged survives a SIGKILL of the server and a
half-done write is never visible.

How tasks reach annotators: showing a task to an annotator creates an *assignment* holding one of
the task's `labels_per_task` slots and the order the responses were shown in. A unique
(task, slot) pair bounds how many annotators hold a task at once, and a unique (task, annotator)
pair makes sure nobody is shown the same task twice, under any number of concurrent servers; a
partial unique index keeps one open assignment per annotator. Writes that change an assignment
lock its row first (`SELECT … FOR UPDATE` on PostgreSQL; SQLite serialises writers with
`BEGIN IMMEDIATE`), so a submit and a lease expiry cannot both win. An assignment not answered
within `lease_s` gives its slot back; a skip gives it back at once.
"""
from __future__ import annotations

import json
import secrets
import time
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from rlhf_jax.labelling.accounts import Accounts
from rlhf_jax.labelling.database import assignments, labels, meta_table, open_database, tasks
from rlhf_jax.labelling.entities import (Annotator, Assignment, Forbidden, Label,  # noqa: F401
                                         LabelError, NotFound, Task, TaskFull, check_label,
                                         check_text, db_id, hash_token, task_uid, unstorable)
from rlhf_jax.labelling.review import Review

_MAX_RETRIES = 50


class _Conflict(Exception):
    """A concurrent transaction changed what this one read: run it again."""


class LabelStore(Accounts, Review):
    """Annotators, tasks, assignments and labels in the database at `url`.

    `labels_per_task`: how many distinct annotators label each task. `lease_s`: how long a shown
    task keeps its slot before another annotator may take it. `token_lifetime_s`: how long a
    login token and a session last (None: until revoked). Annotators, tokens and sessions are
    `labelling.accounts`' methods; quarantine and its audit log `labelling.review`'s.
    """

    def __init__(self, url: str, *, labels_per_task: int = 3, lease_s: float = 1800.0,
                 token_lifetime_s: Optional[float] = None):
        if not isinstance(labels_per_task, int) or labels_per_task < 1:
            raise ValueError(f"labels_per_task={labels_per_task!r}: expected an int >= 1")
        if not lease_s > 0:
            raise ValueError(f"lease_s={lease_s!r}: expected > 0 seconds")
        if token_lifetime_s is not None and not token_lifetime_s > 0:
            raise ValueError(f"token_lifetime_s={token_lifetime_s!r}: expected > 0 seconds, or "
                             "None for no limit")
        self.url, self.labels_per_task, self.lease_s = url, labels_per_task, float(lease_s)
        self.token_lifetime_s = None if token_lifetime_s is None else float(token_lifetime_s)
        self.engine = open_database(url)
        with self._tx(write=True) as c:
            if c.execute(sa.select(meta_table.c.value).where(
                    meta_table.c.key == "secret")).scalar() is None:
                c.execute(meta_table.insert().values(key="secret",
                                                     value=secrets.token_hex(32)))
        with self._tx() as c:
            self.secret = c.execute(sa.select(meta_table.c.value).where(
                meta_table.c.key == "secret")).scalar_one()

    def close(self) -> None:
        """Close the database connections."""
        self.engine.dispose()

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(write=write)
            with conn.begin():
                yield conn

    def _retry(self, fn):
        """Run `fn(conn)` in a write transaction, again after a unique-constraint race."""
        for _ in range(_MAX_RETRIES):
            try:
                with self._tx(write=True) as c:
                    return fn(c)
            except (IntegrityError, _Conflict):
                continue
        raise RuntimeError(f"gave up after {_MAX_RETRIES} conflicting concurrent writes")

    # ---- tasks ---------------------------------------------------------------------------

    def add_tasks(self, records: Sequence[dict]) -> int:
        """Insert tasks ({"prompt", "responses", optional "id" and "meta"}); a task whose id (by
        default a hash of prompt and responses) is already stored is left as it is. Returns how
        many were new. Text no database stores (`entities.unstorable`) raises ValueError naming
        the record, before anything is written."""
        for i, rec in enumerate(records):
            for field in ("prompt", "responses", "id", "meta"):
                why = unstorable(rec.get(field))
                if why:
                    raise ValueError(f"task {i}: field {field!r} {why}; no database stores it")
        added = 0
        with self._tx(write=True) as c:
            known = set(c.execute(sa.select(tasks.c.uid)).scalars())
            for rec in records:
                uid = rec.get("id") or task_uid(rec["prompt"], rec["responses"])
                if uid in known:
                    continue
                known.add(uid)
                c.execute(tasks.insert().values(
                    uid=uid, prompt=rec["prompt"], responses=json.dumps(rec["responses"]),
                    meta=json.dumps(rec.get("meta") or {}), created_at=time.time()))
                added += 1
        return added

    def num_tasks(self) -> int:
        """How many tasks are stored."""
        with self._tx() as c:
            return c.execute(sa.select(sa.func.count()).select_from(tasks)).scalar_one()

    # ---- assignments ---------------------------------------------------------------------

    def _expire(self, c: sa.Connection, now: float) -> None:
        c.execute(assignments.update().where(
            assignments.c.status == "open", assignments.c.shown_at < now - self.lease_s)
            .values(status="expired", slot=None))

    def next_assignment(self, annotator: str, rng=None,
                        now: Optional[float] = None) -> Optional[Assignment]:
        """The task this annotator should label next, with the order to show its responses in.

        An open assignment of theirs comes back as it was (a reload shows the same page).
        Otherwise they take a free slot of a task they have not been shown: the task with the
        most slots already held (so tasks fill up one at a time), then the oldest, its responses in a random order from `rng`
        (a `random.Random`; default: the OS's randomness). None when nothing is left for them.
        """
        rng = rng or secrets.SystemRandom()

        def claim(c: sa.Connection) -> Optional[int]:
            t = time.time() if now is None else now
            self._expire(c, t)
            mine = c.execute(sa.select(assignments.c.id).where(
                assignments.c.annotator_id == annotator, assignments.c.status == "open")
                .order_by(assignments.c.id)).scalar()
            if mine is not None:
                return mine
            seen = sa.select(assignments.c.task_id).where(
                assignments.c.annotator_id == annotator)
            held = (sa.select(assignments.c.task_id, sa.func.count().label("n"))
                    .where(assignments.c.slot.is_not(None)).group_by(assignments.c.task_id)
                    .subquery())
            n_held = sa.func.coalesce(held.c.n, 0)
            row = c.execute(
                sa.select(tasks.c.id, tasks.c.responses)
                .outerjoin(held, held.c.task_id == tasks.c.id)
                .where(tasks.c.id.not_in(seen), n_held < self.labels_per_task)
                .order_by(n_held.desc(), tasks.c.id).limit(1)).first()
            if row is None:
                return None
            taken = set(c.execute(sa.select(assignments.c.slot).where(
                assignments.c.task_id == row.id, assignments.c.slot.is_not(None))).scalars())
            free = set(range(self.labels_per_task)) - taken
            if not free:  # taken by a concurrent commit since the query above
                raise _Conflict()
            slot = min(free)
            order = list(range(len(json.loads(row.responses))))
            rng.shuffle(order)
            return c.execute(assignments.insert().values(
                task_id=row.id, annotator_id=annotator, slot=slot, shown_order=json.dumps(order),
                status="open", shown_at=t)).inserted_primary_key[0]

        aid = self._retry(claim)
        return None if aid is None else self.assignment(aid, annotator)

    def assignment(self, assignment_id: int, annotator: str) -> Assignment:
        """One assignment of `annotator` (Forbidden if it is someone else's)."""
        assignment_id = db_id(assignment_id, "assignment")
        with self._tx() as c:
            row = c.execute(sa.select(assignments, *_task_cols()).join(
                tasks, tasks.c.id == assignments.c.task_id).where(
                assignments.c.id == assignment_id)).first()
        if row is None:
            raise NotFound(f"no assignment {assignment_id}")
        if row.annotator_id != annotator:
            raise Forbidden(f"assignment {assignment_id} is not yours")
        return Assignment(row.id, _task(row), row.annotator_id, json.loads(row.shown_order),
                          row.status, row.shown_at)

    def skip(self, assignment_id: int, annotator: str) -> None:
        """Give the task back without labelling it; it is not shown to this annotator again."""
        def do(c):
            a = _owned(c, assignment_id, annotator)
            if a.status == "open":
                c.execute(assignments.update().where(assignments.c.id == assignment_id)
                          .values(status="skipped", slot=None))
        self._retry(do)

    # ---- labels --------------------------------------------------------------------------

    def submit(self, assignment_id: int, annotator: str, ranks: Sequence[int],
               ratings: Optional[Sequence] = None, rationale: str = "",
               now: Optional[float] = None) -> tuple[int, bool]:
        """Store a label; returns (label id, whether it is new). Submitting an assignment that
        is already labelled returns the stored label's id unchanged (a resent form is not a
        second label). `ranks`/`ratings` are per response in the task's original order."""
        check_text(rationale, "rationale")

        def do(c):
            t = time.time() if now is None else now
            a = _owned(c, assignment_id, annotator)
            existing = c.execute(sa.select(labels.c.id).where(
                labels.c.assignment_id == assignment_id)).scalar()
            if existing is not None:
                return existing, False
            if a.status == "skipped":
                raise LabelError(f"assignment {assignment_id} was skipped")
            n = len(json.loads(c.execute(sa.select(tasks.c.responses).where(
                tasks.c.id == a.task_id)).scalar_one()))
            r, g = check_label(ranks, ratings, n)
            if a.status == "expired":  # answered after the lease ran out: take a slot again
                taken = set(c.execute(sa.select(assignments.c.slot).where(
                    assignments.c.task_id == a.task_id,
                    assignments.c.slot.is_not(None))).scalars())
                free = set(range(self.labels_per_task)) - taken
                if not free:
                    raise TaskFull(f"task {a.task_id} was labelled by others while assignment "
                                   f"{assignment_id} had expired")
                c.execute(assignments.update().where(assignments.c.id == assignment_id)
                          .values(slot=min(free)))
            c.execute(assignments.update().where(assignments.c.id == assignment_id)
                      .values(status="done"))
            lid = c.execute(labels.insert().values(
                assignment_id=assignment_id, task_id=a.task_id, annotator_id=annotator,
                ranks=json.dumps(r), ratings=json.dumps(g), rationale=rationale,
                shown_at=a.shown_at, submitted_at=t)).inserted_primary_key[0]
            return lid, True
        return self._retry(do)

    def update_label(self, label_id: int, annotator: str, ranks: Sequence[int],
                     ratings: Optional[Sequence] = None, rationale: str = "") -> None:
        """Change one's own label (Forbidden for anyone else's)."""
        label_id = db_id(label_id, "label")
        check_text(rationale, "rationale")

        def do(c):
            row = c.execute(sa.select(labels.c.annotator_id, labels.c.task_id).where(
                labels.c.id == label_id)).first()
            if row is None:
                raise NotFound(f"no label {label_id}")
            if row.annotator_id != annotator:
                raise Forbidden(f"label {label_id} is not yours")
            n = len(json.loads(c.execute(sa.select(tasks.c.responses).where(
                tasks.c.id == row.task_id)).scalar_one()))
            r, g = check_label(ranks, ratings, n)
            c.execute(labels.update().where(labels.c.id == label_id).values(
                ranks=json.dumps(r), ratings=json.dumps(g), rationale=rationale,
                updated_at=time.time()))
        self._retry(do)

    def label(self, label_id: int, annotator: Optional[str]) -> Label:
        """One label: the owner's, or any with `annotator=None` (admin)."""
        label_id = db_id(label_id, "label")
        rows = self._labels(labels.c.id == label_id)
        if not rows:
            raise NotFound(f"no label {label_id}")
        if annotator is not None and rows[0].annotator_id != annotator:
            raise Forbidden(f"label {label_id} is not yours")
        return rows[0]

    def labels(self, annotator: Optional[str] = None) -> list[Label]:
        """Every label (or one annotator's), oldest first."""
        return self._labels(None if annotator is None else labels.c.annotator_id == annotator)

    def _labels(self, where) -> list[Label]:
        q = (sa.select(labels, assignments.c.shown_order, *_task_cols())
             .join(assignments, assignments.c.id == labels.c.assignment_id)
             .join(tasks, tasks.c.id == labels.c.task_id).order_by(labels.c.id))
        if where is not None:
            q = q.where(where)
        with self._tx() as c:
            rows = c.execute(q).all()
        return [Label(r.id, _task(r), r.annotator_id, json.loads(r.shown_order),
                      json.loads(r.ranks), json.loads(r.ratings), r.rationale, r.shown_at,
                      r.submitted_at, r.updated_at) for r in rows]

    def progress(self, annotator: str) -> dict:
        """{"done": labels given, "skipped": tasks skipped, "available": tasks they have not
        been shown that still have a free slot}."""
        with self._tx() as c:
            done = c.execute(sa.select(sa.func.count()).select_from(labels).where(
                labels.c.annotator_id == annotator)).scalar_one()
            skipped = c.execute(sa.select(sa.func.count()).select_from(assignments).where(
                assignments.c.annotator_id == annotator,
                assignments.c.status == "skipped")).scalar_one()
            seen = sa.select(assignments.c.task_id).where(
                assignments.c.annotator_id == annotator)
            held = (sa.select(assignments.c.task_id, sa.func.count().label("n"))
                    .where(assignments.c.slot.is_not(None)).group_by(assignments.c.task_id)
                    .subquery())
            available = c.execute(
                sa.select(sa.func.count()).select_from(tasks)
                .outerjoin(held, held.c.task_id == tasks.c.id)
                .where(tasks.c.id.not_in(seen),
                       sa.func.coalesce(held.c.n, 0) < self.labels_per_task)).scalar_one()
        return {"done": done, "skipped": skipped, "available": available}

    def assignment_counts(self) -> dict:
        """{annotator: {status: count}} over every assignment (open, done, skipped, expired)."""
        out: dict = {}
        with self._tx() as c:
            for r in c.execute(sa.select(assignments.c.annotator_id, assignments.c.status,
                                         sa.func.count().label("n"))
                               .group_by(assignments.c.annotator_id, assignments.c.status)):
                out.setdefault(r.annotator_id, {})[r.status] = r.n
        return out

    def check_consistency(self) -> list[str]:
        """Invariants a crash or a race must not break (empty list = all hold): every label's
        assignment is done, every done assignment has exactly one label by its annotator, and
        every open or done assignment holds a slot (so no task exceeds its quota)."""
        problems = []
        with self._tx() as c:
            for r in c.execute(sa.select(labels.c.id, assignments.c.status,
                                         assignments.c.annotator_id, labels.c.annotator_id
                                         .label("labeller")).join(
                    assignments, assignments.c.id == labels.c.assignment_id)):
                if r.status != "done" or r.annotator_id != r.labeller:
                    problems.append(f"label {r.id}: assignment status {r.status}")
            n_done = c.execute(sa.select(sa.func.count()).select_from(assignments).where(
                assignments.c.status == "done")).scalar_one()
            n_labels = c.execute(sa.select(sa.func.count()).select_from(labels)).scalar_one()
            if n_done != n_labels:
                problems.append(f"{n_done} done assignments but {n_labels} labels")
            slotless = c.execute(sa.select(sa.func.count()).select_from(assignments).where(
                assignments.c.status.in_(("open", "done")),
                assignments.c.slot.is_(None))).scalar_one()
            if slotless:
                problems.append(f"{slotless} open or done assignments hold no slot")
        return problems


def _task_cols():
    return (tasks.c.uid, tasks.c.prompt, tasks.c.responses, tasks.c.meta)


def _task(row) -> Task:
    return Task(row.task_id, row.uid, row.prompt, json.loads(row.responses), json.loads(row.meta))


def _owned(c: sa.Connection, assignment_id: int, annotator: str):
    """The assignment's row, locked for this transaction (FOR UPDATE; SQLite's write
    transactions are serialised already)."""
    assignment_id = db_id(assignment_id, "assignment")
    a = c.execute(sa.select(assignments).where(assignments.c.id == assignment_id)
                  .with_for_update()).first()
    if a is None:
        raise NotFound(f"no assignment {assignment_id}")
    if a.annotator_id != annotator:
        raise Forbidden(f"assignment {assignment_id} is not yours")
    return a

