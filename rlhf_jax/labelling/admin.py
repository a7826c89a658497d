"""The admin pages: progress and agreement, each annotator's reliability and flags, a review of
their labels with rationales, quarantine (logged as overrides) and the export.

An annotator's *reliability* is how often their pairwise judgments agree with the majority of
the other annotators on the same (task, response pair), over units where that majority is unique
(`stats.summarise`). They are flagged "low reliability" below `AppSettings.low_reliability`
once `reliability_min_units` judgments have been compared, and "quarantined" while an admin or a
screening defence holds them so (`LabelStore.set_quarantine`).
"""
from __future__ import annotations

import io
import json
from itertools import groupby
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from rlhf_jax.labelling import export as export_mod
from rlhf_jax.labelling import stats as stats_mod
from rlhf_jax.labelling.entities import Label, LabelError, NotFound
from rlhf_jax.labelling.web import LETTERS, Web


def verdict(lab: Label) -> str:
    """A label's ranking in the letters the annotator saw, best first: "B > A", "A = B"."""
    by_rank = sorted(range(len(lab.shown_order)), key=lambda pos: lab.ranks[lab.shown_order[pos]])
    groups = groupby(by_rank, key=lambda pos: lab.ranks[lab.shown_order[pos]])
    return " > ".join(" = ".join(LETTERS[pos] for pos in g) for _, g in groups)


def flag_rows(summary: dict, quarantined: dict, settings) -> list[dict]:
    """The summary's annotator rows, each with "flags" (quarantined, low reliability) and
    "quarantine" (the override that quarantined them, or None)."""
    rows = []
    for r in summary["annotators"]:
        flags = []
        if r["annotator"] in quarantined:
            flags.append("quarantined")
        rate = r["agreement_with_others"]
        if r["agreement_units"] >= settings.reliability_min_units and rate < \
                settings.low_reliability:
            flags.append("low reliability")
        rows.append({**r, "flags": flags, "quarantine": quarantined.get(r["annotator"])})
    return rows


def add_routes(app: FastAPI, web: Web) -> None:
    """Register the admin pages on `app`."""
    store, page, error = web.store, web.page, web.error

    async def overview():
        """(rows with flags, the summary, labels, quarantined) for the pages."""
        labs = await run_in_threadpool(store.labels)
        summary = await run_in_threadpool(stats_mod.summarise, store, labs)
        quarantined = await run_in_threadpool(store.quarantined)
        return flag_rows(summary, quarantined, web.settings), summary, labs, quarantined

    @app.get("/admin")
    async def admin_page(request: Request):
        who, csrf, denied = await web.gate(request, admin=True)
        if denied:
            return denied
        rows, summary, _, quarantined = await overview()
        log = await run_in_threadpool(store.overrides)
        return page("admin.html", who=who, csrf=csrf, s=summary, rows=rows, overrides=log,
                    quarantined=sorted(quarantined), kinds=export_mod.KINDS)

    @app.get("/admin/annotators/{annotator_id}")
    async def annotator_page(request: Request, annotator_id: str):
        who, csrf, denied = await web.gate(request, admin=True)
        if denied:
            return denied
        rows, _, labs, _ = await overview()
        row = next((r for r in rows if r["annotator"] == annotator_id), None)
        if row is None:
            return error(404, f"no annotator {annotator_id[:64]!r}", who, csrf)
        mine = [lab for lab in labs if lab.annotator_id == annotator_id]
        log = await run_in_threadpool(store.overrides, annotator_id)
        return page("admin_annotator.html", who=who, csrf=csrf, r=row, overrides=log,
                    labels=[(lab, verdict(lab)) for lab in mine])

    @app.get("/admin/labels/{label_id}")
    async def label_page(request: Request, label_id: str):
        who, csrf, denied = await web.gate(request, admin=True)
        if denied:
            return denied
        try:
            lab = await run_in_threadpool(store.label, label_id, None)
        except NotFound as e:
            return error(404, str(e), who, csrf)
        shown = [{"letter": LETTERS[pos], "text": lab.task.responses[i],
                  "rank": lab.ranks[i] + 1, "rating": lab.ratings[i]}
                 for pos, i in enumerate(lab.shown_order)]
        return page("admin_label.html", who=who, csrf=csrf, lab=lab, shown=shown,
                    verdict=verdict(lab))

    @app.post("/admin/annotators/{annotator_id}/quarantine")
    async def quarantine(request: Request, annotator_id: str):
        who, csrf, denied = await web.gate(request, admin=True)
        if denied:
            return denied
        form = await web.form(request, csrf, max_fields=8)
        if form is None:
            return error(403, "The form is not valid for this session; reload the page.", who,
                         csrf)
        if form.get("quarantined") not in ("0", "1"):
            return error(422, "quarantined: expected 1 (quarantine) or 0 (release)", who, csrf)
        try:
            await run_in_threadpool(store.set_quarantine, annotator_id,
                                    form.get("quarantined") == "1", form.get("reason", ""),
                                    who.id)
        except NotFound as e:
            return error(404, str(e), who, csrf)
        except LabelError as e:
            return error(422, str(e), who, csrf)
        return RedirectResponse(f"/admin/annotators/{quote(annotator_id, safe='')}", 303)

    @app.get("/admin/export/{kind}.jsonl")
    async def export(request: Request, kind: str, without_quarantined: str = ""):
        who, csrf, denied = await web.gate(request, admin=True)
        if denied:
            return denied
        if kind not in export_mod.KINDS:
            return error(404, f"no export kind {kind[:20]!r}", who, csrf)
        labs = await run_in_threadpool(store.labels)
        headers = {"Content-Disposition": f'attachment; filename="{kind}.jsonl"'}
        if without_quarantined not in ("", "0"):
            quarantined = await run_in_threadpool(store.quarantined)
            labs, left = export_mod.leave_out(labs, quarantined)
            headers["X-Left-Out-Annotators"] = quote(",".join(left["annotators"]), safe=",")
            headers["X-Left-Out-Labels"] = str(left["labels"])
        records, _ = export_mod.export_records(labs, kind)
        buf = io.StringIO()
        for r in records:
            buf.write(json.dumps(r, ensure_ascii=False) + "\n")
        return Response(buf.getvalue(), media_type="application/x-ndjson", headers=headers)

