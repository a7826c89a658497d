"""Quarantine and its audit log: the part of the label store where admins, or a screening
defence, decide whose labels to trust.

Quarantining an annotator changes nothing they labelled and does not stop them labelling; it
marks them so that an export can leave their labels out (`export.export_all(...,
leave_out=store.quarantined())`) while someone reviews them. Every change is an *override*: a
row of the `overrides` table with who made it (`actor`: an admin's id or a defence's name), when
and why; an annotator's state is their latest override's. Rows are only ever added.
"""
from __future__ import annotations

import time
from typing import Optional

import sqlalchemy as sa

from rlhf_jax.labelling.database import annotators, overrides
from rlhf_jax.labelling.entities import (LabelError, NotFound, Override, check_text,
                                         valid_annotator_id)

QUARANTINE, RELEASE = "quarantine", "release"
MAX_REASON_CHARS = 1000


class Review:
    """The quarantine methods of `LabelStore` (which provides `_tx`)."""

    def set_quarantine(self, annotator: str, quarantined: bool, reason: str, by: str,
                       now: Optional[float] = None) -> bool:
        """Quarantine (`quarantined=True`) or release an annotator, logging who (`by`), when
        and why (`reason`, required). Returns whether their state changed: asking for the
        state they are in already logs nothing. NotFound for an unknown annotator or an admin;
        LabelError for an empty or unstorable reason or actor."""
        reason = check_text(reason.strip() if isinstance(reason, str) else "", "reason")
        if not reason or len(reason) > MAX_REASON_CHARS:
            raise LabelError(f"a reason of 1 to {MAX_REASON_CHARS} characters is required")
        if not isinstance(by, str) or not 0 < len(by.strip()) <= 64:
            raise LabelError(f"by={by!r}: expected who decides, 1 to 64 characters")
        by = check_text(by.strip(), "by")
        if not valid_annotator_id(annotator):
            raise NotFound(f"no annotator {str(annotator)[:64]!r}")
        action = QUARANTINE if quarantined else RELEASE
        with self._tx(write=True) as c:
            role = c.execute(sa.select(annotators.c.role).where(annotators.c.id == annotator)
                             .with_for_update()).scalar()  # one change at a time per annotator
            if role != "annotator":
                raise NotFound(f"no annotator {annotator!r}" if role is None else
                               f"{annotator!r} is an admin; only annotators are quarantined")
            last = c.execute(sa.select(overrides.c.action).where(
                overrides.c.annotator_id == annotator).order_by(overrides.c.id.desc())
                .limit(1)).scalar()
            if (last == QUARANTINE) == quarantined:
                return False
            c.execute(overrides.insert().values(
                annotator_id=annotator, action=action, reason=reason, actor=by,
                at=time.time() if now is None else now))
        return True

    def overrides(self, annotator: Optional[str] = None) -> list[Override]:
        """The audit log, oldest first (or one annotator's)."""
        q = sa.select(overrides).order_by(overrides.c.id)
        if annotator is not None:
            q = q.where(overrides.c.annotator_id == annotator)
        with self._tx() as c:
            return [Override(r.id, r.annotator_id, r.action, r.reason, r.actor, r.at)
                    for r in c.execute(q)]

    def quarantined(self) -> dict[str, Override]:
        """{annotator: the override that quarantined them} for those quarantined now."""
        latest = {}
        for o in self.overrides():
            latest[o.annotator_id] = o
        return {a: o for a, o in sorted(latest.items()) if o.action == QUARANTINE}
