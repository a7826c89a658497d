"""The labelling web app: FastAPI routes, Jinja templates (autoescaped), plain HTML forms.

Annotators log in with their token (a link `/login?token=…` opens a session kept in an
HttpOnly, SameSite=Lax cookie; logging out ends it on the server), read the task's guidelines,
see a prompt and its responses in a random order that the database keeps, and choose the better
response, a tie, or a ranking of K; optionally rate each on the declared Likert scale and write
a rationale; or skip. Each label is committed before the confirming redirect is sent. The admin
pages (`labelling.admin`) show counts, agreement, reliability and flags per annotator, review
their labels, quarantine annotators and export the labels.

Every form carries a CSRF token (an HMAC of the session under a secret kept in the database), the
request body is bounded and read strictly as a UTF-8 form (`labelling.inputs`), ids outside the
database's integer range name nothing (404), model text is escaped, and the
Content-Security-Policy allows only the app's own script file, so even a markup bug could not
run a response's `<script>`.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from rlhf_jax.labelling import admin as admin_mod
from rlhf_jax.labelling.entities import Label, db_id
from rlhf_jax.labelling.inputs import BodyLimit, FormError, read_form, small_int
from rlhf_jax.labelling.store import Annotator, Forbidden, LabelError, LabelStore, NotFound
from rlhf_jax.labelling.web import COOKIE, CSP, HERE, LETTERS, Web

log = logging.getLogger(__name__)


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
    guidelines: str = ""  # Markdown shown with every task (`labelling.guidelines`' subset)
    low_reliability: float = 0.5  # flag annotators agreeing with the others' majority less
    reliability_min_units: int = 5  # ... over at least this many compared judgments

    def __post_init__(self):
        if self.likert is not None:
            lo, hi = self.likert
            if not (isinstance(lo, int) and isinstance(hi, int) and lo < hi):
                raise ValueError(f"likert={self.likert!r}: expected (low, high) ints, low < high")
        if self.rationale_max_chars < 1 or self.max_request_bytes < 1024:
            raise ValueError("rationale_max_chars must be >= 1 and max_request_bytes >= 1024")
        if not 0 <= self.low_reliability <= 1 or self.reliability_min_units < 1:
            raise ValueError(f"low_reliability={self.low_reliability!r} must be in [0, 1] and "
                             f"reliability_min_units={self.reliability_min_units!r} >= 1")


def create_app(store: LabelStore, settings: AppSettings = AppSettings(),
               on_label: Optional[Callable[[Label], object]] = None) -> FastAPI:
    """The labelling app over `store`. `on_label(label)` runs after each new or edited label
    is stored (e.g. `reward.PersonalRewardModel.add_label`, which updates the annotator's
    personal reward); if it fails, the label stays saved and the failure is logged."""
    app = FastAPI(title=settings.title, docs_url=None, redoc_url=None, openapi_url=None)
    web = Web(store, settings)
    page, error = web.page, web.error
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

    @app.exception_handler(FormError)
    async def bad_form(request: Request, e: FormError):
        return error(e.status, str(e))

    @app.get("/healthz")
    async def healthz():
        return PlainTextResponse("ok")

    @app.get("/")
    async def index(request: Request):
        who, _ = await web.session(request)
        if who:
            return RedirectResponse("/admin" if who.is_admin else "/label", 303)
        return page("login.html")

    @app.get("/login")
    async def login_link(request: Request, token: str = ""):
        opened = await run_in_threadpool(store.open_session, token)
        if opened is None:
            return page("login.html", 401, message="That login link is not valid (or has "
                                                    "expired).")
        return web.login_response(request, *opened)

    @app.post("/login")
    async def login_form(request: Request):
        form = await read_form(request, max_fields=4)
        opened = await run_in_threadpool(store.open_session, form.get("token", ""))
        if opened is None:
            return page("login.html", 401, message="That token is not valid (or has expired).")
        return web.login_response(request, *opened)

    @app.post("/logout")
    async def logout(request: Request):
        who, csrf = await web.session(request)
        if who is None or await web.form(request, csrf) is None:
            return error(403, "Not logged in, or the form is not valid for this session.")
        await run_in_threadpool(store.end_session, request.cookies.get(COOKIE))
        r = RedirectResponse("/", 303)
        r.delete_cookie(COOKIE, path="/")
        return r

    async def annotator(request: Request):
        return await web.gate(request, admin=False)

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
                k = small_int(v)
                if k is None or not 1 <= k <= n:
                    if n == 2:
                        raise LabelError("choose the better response, or a tie")
                    raise LabelError(f"rank of response {LETTERS[pos]}: expected 1 to {n} "
                                     f"(1 = best), got {v[:20]!r}")
                by_pos.append(k - 1)
        ratings_by_pos = []
        for pos in range(n):
            v = form.get(f"rating_{pos}", "")
            if settings.likert is None or v == "":
                if settings.likert is not None and settings.require_ratings:
                    raise LabelError(f"rate response {LETTERS[pos]}")
                ratings_by_pos.append(None)
                continue
            lo, hi = settings.likert
            r = small_int(v)
            if r is None or not lo <= r <= hi:
                raise LabelError(f"rating of response {LETTERS[pos]}: expected {lo} to {hi}, "
                                 f"got {v[:20]!r}")
            ratings_by_pos.append(r)
        rationale = form.get("rationale", "").strip()
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
        return db_id(form.get("assignment", ""), "assignment")

    async def post_form(request: Request, action, on_label_error=None) -> Response:
        """An annotator's form post: session and CSRF checks, then `await action(who, csrf,
        form)`. Someone else's assignment or label gives 403, a missing one 404, an invalid
        label 422 (the page from `on_label_error(who, csrf, form, error)` if given)."""
        who, csrf, denied = await annotator(request)
        if denied:
            return denied
        form = await web.form(request, csrf)
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
    async def view_label(request: Request, label_id: str):
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
    async def edit_label(request: Request, label_id: str):
        async def change(who, csrf, form):
            lid = db_id(label_id, "label")
            lab = await run_in_threadpool(store.label, lid, who.id)
            ranks, ratings, rationale = parse_label(form, len(lab.task.responses),
                                                    lab.shown_order)
            await run_in_threadpool(store.update_label, lid, who.id, ranks, ratings, rationale)
            await hook(lid, who.id)  # an edit replaces what the label said
            return RedirectResponse(f"/labels/{lid}", 303)
        return await post_form(request, change)

    admin_mod.add_routes(app, web)
    return app
