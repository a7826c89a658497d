"""Annotators, their login tokens and their sessions: the part of the label store that says who
is asking.

A login token (a 256-bit random string in the link an annotator is given) is stored hashed. Using
it opens a *session*: another random token, also stored hashed, that the browser keeps in a
cookie. Logging out deletes the session's row, so the cookie is refused from then on even if it
was copied; issuing a new login token ends every session of that annotator. With
`token_lifetime_s` set, a login token stops working that long after it was issued and a session
that long after it was opened (the check uses the setting in force, so a lifetime given later
applies to tokens issued earlier too); None keeps both valid until revoked.
"""
from __future__ import annotations

import secrets
import time
from typing import Optional

import sqlalchemy as sa

from rlhf_jax.labelling.database import annotators, sessions
from rlhf_jax.labelling.entities import (ROLES, Annotator, NotFound, hash_token,
                                         valid_annotator_id)

MAX_TOKEN_CHARS = 256


class Accounts:
    """The annotator and session methods of `LabelStore` (which provides `_tx` and
    `token_lifetime_s`)."""

    token_lifetime_s: Optional[float]

    def add_annotator(self, annotator_id: str, role: str = "annotator",
                      now: Optional[float] = None) -> str:
        """Register an annotator (or admin) and return their new login token (shown once: only
        its hash is stored)."""
        if role not in ROLES:
            raise ValueError(f"role={role!r}: expected one of {ROLES}")
        if not valid_annotator_id(annotator_id):
            raise ValueError(f"annotator id {annotator_id!r}: expected 1-64 letters, digits, "
                             "'-', '_' or '.'")
        token, t = secrets.token_urlsafe(32), time.time() if now is None else now
        with self._tx(write=True) as c:
            c.execute(annotators.insert().values(id=annotator_id, token_hash=hash_token(token),
                                                 role=role, created_at=t, token_issued_at=t))
        return token

    def reissue_token(self, annotator_id: str, now: Optional[float] = None) -> str:
        """A new login token for an existing annotator; the old one and every session it
        opened stop working."""
        token, t = secrets.token_urlsafe(32), time.time() if now is None else now
        with self._tx(write=True) as c:
            n = c.execute(annotators.update().where(annotators.c.id == annotator_id).values(
                token_hash=hash_token(token), token_issued_at=t)).rowcount
            c.execute(sessions.delete().where(sessions.c.annotator_id == annotator_id))
        if n != 1:
            raise NotFound(f"no annotator {annotator_id!r}")
        return token

    def annotator_ids(self, role: Optional[str] = None) -> list[str]:
        """Every annotator's id (or those of one role), sorted."""
        q = sa.select(annotators.c.id).order_by(annotators.c.id)
        if role is not None:
            q = q.where(annotators.c.role == role)
        with self._tx() as c:
            return list(c.execute(q).scalars())

    def _live(self, since: float, now: Optional[float]) -> bool:
        """Whether something issued at `since` is still within the token lifetime."""
        life = self.token_lifetime_s
        return life is None or (time.time() if now is None else now) < since + life

    def authenticate(self, token: Optional[str], now: Optional[float] = None
                     ) -> Optional[Annotator]:
        """The annotator whose login token this is, or None (also for an expired token)."""
        if not _plausible(token):
            return None
        with self._tx() as c:
            row = c.execute(sa.select(annotators).where(
                annotators.c.token_hash == hash_token(token))).first()
        if row is None or not self._live(row.token_issued_at or row.created_at, now):
            return None
        return Annotator(row.id, row.role)

    def open_session(self, token: Optional[str], now: Optional[float] = None
                     ) -> Optional[tuple[Annotator, str]]:
        """Log in with a login token: (the annotator, a new session token), or None when the
        login token is not valid. Sessions past the lifetime are deleted on the way."""
        who = self.authenticate(token, now)
        if who is None:
            return None
        session, t = secrets.token_urlsafe(32), time.time() if now is None else now
        with self._tx(write=True) as c:
            if self.token_lifetime_s is not None:
                c.execute(sessions.delete().where(
                    sessions.c.created_at <= t - self.token_lifetime_s))
            c.execute(sessions.insert().values(token_hash=hash_token(session),
                                               annotator_id=who.id, created_at=t))
        return who, session

    def session(self, session_token: Optional[str], now: Optional[float] = None
                ) -> Optional[Annotator]:
        """The annotator whose open session this is, or None (ended, expired or unknown)."""
        if not _plausible(session_token):
            return None
        with self._tx() as c:
            row = c.execute(sa.select(sessions.c.created_at, annotators.c.id, annotators.c.role)
                            .join(annotators, annotators.c.id == sessions.c.annotator_id)
                            .where(sessions.c.token_hash == hash_token(session_token))).first()
        if row is None or not self._live(row.created_at, now):
            return None
        return Annotator(row.id, row.role)

    def end_session(self, session_token: str) -> bool:
        """Log out: delete the session, so its token is refused from now on. Returns whether
        there was one."""
        if not _plausible(session_token):
            return False
        with self._tx(write=True) as c:
            return c.execute(sessions.delete().where(
                sessions.c.token_hash == hash_token(session_token))).rowcount > 0


def _plausible(token) -> bool:
    """Whether `token` could be one of ours (a short string), before hashing and a lookup."""
    return isinstance(token, str) and 0 < len(token) <= MAX_TOKEN_CHARS
