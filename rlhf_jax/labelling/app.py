"""The labelling web app: FastAPI routes, Jinja templates (autoescaped), plain HTML forms.

Annotators log in with their token (a link `/login?token=…` sets an HttpOnly, SameSite=Lax
cookie), see a prompt and its responses in a random order that the database keeps, and choose the
better response, a tie, or a ranking of K; optionally rate each on the declared Likert scale and
write a rationale; or skip. Each label is committed before the confirming redirect is sent. The
admin page shows counts, agreement, position bias and time per label, and exports the labels.

Every form carries a CSRF token (an HMAC of the session under a secret kept in the database), the
request body is bounded, model text is escaped, and the Content-Security-Policy allows only the
app's own script file, so even a markup bug could not run a response's `<script>`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import json
import logging
from pathlib import Path
from typing import Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from rlhf_jax.labelling import export as export_mod
from rlhf_jax.labelling import stats as stats_mod
from rlhf_jax.labelling.entities import Label
from rlhf_jax.labelling.store import (Annotator, Forbidden, LabelError, LabelStore, NotFound,
                                      hash_token)

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
COOKIE = "rlhf_label_session"
LETTERS = "ABCDEFGHI"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


@dataclasses.dataclass(frozen=True)
class AppSettings:
    """What the pages ask and the limits they enforce."""

    likert: Optional[tuple[int, int]] = (1, 7)  # rating scale (None: no ratings)
    likert_labels: tuple[str, str] = ("very poor", "excellent")  # meaning of its two ends
    require_ratings: bool = False  # every response must be rated
    require_rationale: bool = False  # a label needs a rationale
    rationale_max_chars: int = 2000
    max_request_bytes: int = 65536  # larger request bodies get 413
    title: str = "rlhf_jax labelling"

    def __post_init__(self):
        if self.likert is not None:
            lo, hi = self.likert
            if not (isinstance(lo, int) and isinstance(hi, int) and lo < hi):
                raise ValueError(f"likert={self.likert!r}: expected (low, high) ints, low < high")
        if self.rationale_max_chars < 1 or self.max_request_bytes < 1024:
            raise ValueError("rationale_max_chars must be >= 1 and max_request_bytes >= 1024")


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413, whether it declares its
    length or streams it in chunks."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await PlainTextResponse("request body too large", 413)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await PlainTextResponse("request body too large", 413)(scope, receive, send)


class _TooLarge(Exception):
    pass


def _is_int(v) -> bool:
    """A form value made of ASCII digits only (str.isdigit also accepts '²')."""
    return isinstance(v, str) and v.isascii() and v.isdigit()


def csrf_token(store: LabelStore, token: str) -> str:
    """The CSRF token for a session: HMAC-SHA256 of the session token's hash under the
    database's secret (stable across restarts, different for every annotator)."""
    return hmac.new(store.secret.encode(), b"csrf:" + hash_token(token).encode(),
                    hashlib.sha256).hexdigest()


def create_app(store: LabelStore, settings: AppSettings = AppSettings(),
               on_label: Optional[Callable[[Label], object]] = None) -> FastAPI:
    """The labelling app over `store`. `on_label(label)` runs after each new or edited label
    is stored (e.g. `reward.PersonalRewardModel.add_label`, which updates the annotator's
    personal reward); if it fails, the label stays saved and the failure is logged."""
    app = FastAPI(title=settings.title, docs_url=None, redoc_url=None, openapi_url=None)
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    def page(name: str, status: int = 200, **kw) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(settings=settings, letters=LETTERS,
                                                          **kw), status_code=status)

    def error(status: int, message: str, who: Optional[Annotator] = None,
              csrf: Optional[str] = None) -> HTMLResponse:
        return page("error.html", status, message=message, who=who, csrf=csrf)

    async def session(request: Request) -> tuple[Optional[Annotator], Optional[str]]:
        token = request.cookies.get(COOKIE)
        who = await run_in_threadpool(store.authenticate, token)
        return who, (csrf_token(store, token) if who else None)

    async def form_of(request: Request, csrf: str):
        """The posted form, or None when its CSRF token is wrong."""
        form = await request.form(max_files=0, max_fields=64)
        sent = form.get("csrf", "")
        ok = isinstance(sent, str) and hmac.compare_digest(sent.encode(), csrf.encode())
        return form if ok else None

    def login_response(request: Request, who: Annotator, token: str) -> Response:
        # Lax, not Strict: a login link opened from mail or chat is a cross-site navigation,
        # and the redirect after it must carry the cookie. Every POST checks a CSRF token.
        r = RedirectResponse("/admin" if who.is_admin else "/label", 303)
        r.set_cookie(COOKIE, token, httponly=True, samesite="lax", path="/",
                     secure=request.url.scheme == "https")
        return r

    @app.get("/healthz")
    async def healthz():
        return PlainTextResponse("ok")

    @app.get("/")
    async def index(request: Request):
        who, _ = await session(request)
        if who:
            return RedirectResponse("/admin" if who.is_admin else "/label", 303)
        return page("login.html")

    @app.get("/login")
    async def login_link(request: Request, token: str = ""):
        who = await run_in_threadpool(store.authenticate, token)
        if who is None:
            return page("login.html", 401, message="That login link is not valid.")
        return login_response(request, who, token)

    @app.post("/login")
    async def login_form(request: Request):
        form = await request.form(max_files=0, max_fields=4)
        token = form.get("token", "")
        who = await run_in_threadpool(store.authenticate, token if isinstance(token, str)
                                      else "")
        if who is None:
            return page("login.html", 401, message="That token is not valid.")
        return login_response(request, who, token)

    @app.post("/logout")
    async def logout(request: Request):
        who, csrf = await session(request)
        if who is None or await form_of(request, csrf) is None:
            return error(403, "Not logged in, or the form is not valid for this session.")
        r = RedirectResponse("/", 303)
        r.delete_cookie(COOKIE, path="/")
        return r

    async def annotator(request: Request):
        who, csrf = await session(request)
        if who is None:
            return None, None, RedirectResponse("/", 303)
        if who.is_admin:
            return None, None, error(403, "Admins do not label; log in with an annotator token.",
                                     who, csrf)
        return who, csrf, None

    def task_view(assignment) -> list[dict]:
        t = assignment.task
        return [{"pos": pos, "letter": LETTERS[pos], "text": t.responses[i]}
                for pos, i in enumerate(assignment.shown_order)]

    async def show_task(request: Request, who: Annotator, csrf: str, *, status: int = 200,
                        message: str = "", form=None) -> Response:
        a = await run_in_threadpool(store.next_assignment, who.id)
        progress = await run_in_threadpool(store.progress, who.id)
        saved = request.query_params.get("saved")
        if a is None:
            return page("done.html", status, who=who, csrf=csrf, progress=progress, saved=saved,
                        message=message)
        if form is not None and form.get("assignment") != str(a.id):
            form = None  # the answer was for another task: do not carry it over to this one
        return page("label.html", status, who=who, csrf=csrf, a=a, shown=task_view(a),
                    progress=progress, saved=saved, message=message, form=form or {})

    @app.get("/label")
    async def label_page(request: Request):
        who, csrf, denied = await annotator(request)
        return denied or await show_task(request, who, csrf)

    def parse_label(form, n: int, shown_order: list) -> tuple[list, list, str]:
        """(ranks, ratings, rationale) in the task's original response order, from a form
        whose fields name shown positions. Raises LabelError naming the field."""
        if n == 2 and "choice" in form:
            choice = form.get("choice")
            if choice == "tie":
                by_pos = [0, 0]
            elif choice in ("0", "1"):
                by_pos = [0, 1] if choice == "0" else [1, 0]
            else:
                raise LabelError(f"choice={choice!r}: expected 0, 1 or tie")
        else:
            by_pos = []
            for pos in range(n):
                v = form.get(f"rank_{pos}", "")
                if not (_is_int(v) and 1 <= int(v) <= n):
                    if n == 2:
                        raise LabelError("choose the better response, or a tie")
                    raise LabelError(f"rank of response {LETTERS[pos]}: expected 1 to {n} "
                                     f"(1 = best), got {v!r}")
                by_pos.append(int(v) - 1)
        ratings_by_pos = []
        for pos in range(n):
            v = form.get(f"rating_{pos}", "")
            if settings.likert is None or v == "":
                if settings.likert is not None and settings.require_ratings:
                    raise LabelError(f"rate response {LETTERS[pos]}")
                ratings_by_pos.append(None)
                continue
            lo, hi = settings.likert
            r = int(v) if _is_int(v) else None
            if r is None or not lo <= r <= hi:
                raise LabelError(f"rating of response {LETTERS[pos]}: expected {lo} to {hi}, "
                                 f"got {v!r}")
            ratings_by_pos.append(r)
        rationale = form.get("rationale", "")
        if not isinstance(rationale, str):
            raise LabelError("rationale must be text")
        rationale = rationale.strip()
        if len(rationale) > settings.rationale_max_chars:
            raise LabelError(f"rationale is {len(rationale)} characters; at most "
                             f"{settings.rationale_max_chars}")
        if settings.require_rationale and not rationale:
            raise LabelError("write a rationale")
        ranks, ratings = [0] * n, [None] * n
        for pos, i in enumerate(shown_order):
            ranks[i], ratings[i] = by_pos[pos], ratings_by_pos[pos]
        return ranks, ratings, rationale

    def assignment_id(form) -> int:
        v = form.get("assignment", "")
        if not (_is_int(v) and len(v) < 12):
            raise NotFound("no assignment in the form")
        return int(v)

    async def post_form(request: Request, action, on_label_error=None) -> Response:
        """An annotator's form post: session and CSRF checks, then `await action(who, csrf,
        form)`. Someone else's assignment or label gives 403, a missing one 404, an invalid
        label 422 (the page from `on_label_error(who, csrf, form, error)` if given)."""
        who, csrf, denied = await annotator(request)
        if denied:
            return denied
        form = await form_of(request, csrf)
        if form is None:
            return error(403, "The form is not valid for this session; reload the page.", who,
                         csrf)
        try:
            return await action(who, csrf, form)
        except Forbidden as e:
            return error(403, str(e), who, csrf)
        except NotFound as e:
            return error(404, str(e), who, csrf)
        except LabelError as e:
            if on_label_error is None:
                return error(422, str(e), who, csrf)
            return await on_label_error(who, csrf, form, e)

    async def hook(label_id: int, annotator: str) -> None:
        """`on_label` with the stored label; a failure is logged, the label stays saved."""
        if on_label is None:
            return
        try:
            await run_in_threadpool(on_label, store.label(label_id, annotator))
        except Exception:  # noqa: BLE001 - the label is saved; the hook is not the app
            log.exception("on_label failed for label %d (the label is saved)", label_id)

    @app.post("/label")
    async def submit(request: Request):
        async def save(who, csrf, form):
            aid = assignment_id(form)
            a = await run_in_threadpool(store.assignment, aid, who.id)
            ranks, ratings, rationale = parse_label(form, len(a.task.responses), a.shown_order)
            lid, new = await run_in_threadpool(store.submit, aid, who.id, ranks, ratings,
                                               rationale)
            if new:
                await hook(lid, who.id)
            return RedirectResponse(f"/label?saved={lid}", 303)

        async def correct(who, csrf, form, e):  # the same task again, with the form as sent
            return await show_task(request, who, csrf, status=422, message=str(e),
                                   form=dict(form))
        return await post_form(request, save, correct)

    @app.post("/skip")
    async def skip(request: Request):
        async def give_back(who, csrf, form):
            await run_in_threadpool(store.skip, assignment_id(form), who.id)
            return RedirectResponse("/label", 303)
        return await post_form(request, give_back)

    @app.get("/labels")
    async def my_labels(request: Request):
        who, csrf, denied = await annotator(request)
        if denied:
            return denied
        mine = await run_in_threadpool(store.labels, who.id)
        return page("labels.html", who=who, csrf=csrf, labels=mine)

    def label_view(lab) -> list[dict]:
        return [{"pos": pos, "letter": LETTERS[pos], "text": lab.task.responses[i],
                 "rank": lab.ranks[i] + 1, "rating": lab.ratings[i]}
                for pos, i in enumerate(lab.shown_order)]

    @app.get("/labels/{label_id}")
    async def view_label(request: Request, label_id: int):
        who, csrf, denied = await annotator(request)
        if denied:
            return denied
        try:
            lab = await run_in_threadpool(store.label, label_id, who.id)
        except Forbidden as e:
            return error(403, str(e), who, csrf)
        except NotFound as e:
            return error(404, str(e), who, csrf)
        return page("label_view.html", who=who, csrf=csrf, lab=lab, shown=label_view(lab))

    @app.post("/labels/{label_id}")
    async def edit_label(request: Request, label_id: int):
        async def change(who, csrf, form):
            lab = await run_in_threadpool(store.label, label_id, who.id)
            ranks, ratings, rationale = parse_label(form, len(lab.task.responses),
                                                    lab.shown_order)
            await run_in_threadpool(store.update_label, label_id, who.id, ranks, ratings,
                                    rationale)
            await hook(label_id, who.id)  # an edit replaces what the label said
            return RedirectResponse(f"/labels/{label_id}", 303)
        return await post_form(request, change)

    async def admin(request: Request):
        who, csrf = await session(request)
        if who is None:
            return None, None, RedirectResponse("/", 303)
        if not who.is_admin:
            return None, None, error(403, "The admin page needs an admin token.", who, csrf)
        return who, csrf, None

    @app.get("/admin")
    async def admin_page(request: Request):
        who, csrf, denied = await admin(request)
        if denied:
            return denied
        labs = await run_in_threadpool(store.labels)
        summary = await run_in_threadpool(stats_mod.summarise, store, labs)
        return page("admin.html", who=who, csrf=csrf, s=summary, kinds=export_mod.KINDS)

    @app.get("/admin/export/{kind}.jsonl")
    async def export(request: Request, kind: str):
        who, csrf, denied = await admin(request)
        if denied:
            return denied
        if kind not in export_mod.KINDS:
            return error(404, f"no export kind {kind!r}", who, csrf)
        labs = await run_in_threadpool(store.labels)
        records, _ = export_mod.export_records(labs, kind)
        buf = io.StringIO()
        for r in records:
            buf.write(json.dumps(r, ensure_ascii=False) + "\n")
        return Response(buf.getvalue(), media_type="application/x-ndjson", headers={
            "Content-Disposition": f'attachment; filename="{kind}.jsonl"'})

    return app
