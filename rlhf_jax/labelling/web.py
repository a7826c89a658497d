"""What every page of the labelling app shares: templates (autoescaped), sessions and their
cookie, CSRF tokens, forms and the gates that keep annotators and admins to their own pages.
The annotator pages are `labelling.app`'s, the admin pages `labelling.admin`'s."""
from __future__ import annotations

import datetime
import hashlib
import hmac
from pathlib import Path
from typing import Optional

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from rlhf_jax.labelling.entities import Annotator, hash_token
from rlhf_jax.labelling.guidelines import render_markdown
from rlhf_jax.labelling.inputs import read_form

HERE = Path(__file__).parent
COOKIE = "rlhf_label_session"
LETTERS = "ABCDEFGHI"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def csrf_token(store, token: str) -> str:
    """The CSRF token for a session: HMAC-SHA256 of the session token's hash under the
    database's secret (stable across restarts, different for every session)."""
    return hmac.new(store.secret.encode(), b"csrf:" + hash_token(token).encode(),
                    hashlib.sha256).hexdigest()


class Web:
    """Pages and sessions over `store` with the app's `settings` (an `app.AppSettings`)."""

    def __init__(self, store, settings):
        self.store, self.settings = store, settings
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"),
                               autoescape=select_autoescape(default=True,
                                                            default_for_string=True))
        self.env.filters["utc"] = _utc
        self.guidelines = Markup(render_markdown(settings.guidelines))

    def page(self, name: str, status: int = 200, **kw) -> HTMLResponse:
        """Template `name` rendered with the settings, the letters and `kw`."""
        return HTMLResponse(self.env.get_template(name).render(
            settings=self.settings, letters=LETTERS, guidelines=self.guidelines, **kw),
            status_code=status)

    def error(self, status: int, message: str, who: Optional[Annotator] = None,
              csrf: Optional[str] = None) -> HTMLResponse:
        """The error page with `message`."""
        return self.page("error.html", status, message=message, who=who, csrf=csrf)

    async def session(self, request: Request) -> tuple[Optional[Annotator], Optional[str]]:
        """(who, CSRF token) of the request's session cookie, or (None, None)."""
        token = request.cookies.get(COOKIE)
        who = await run_in_threadpool(self.store.session, token)
        return who, (csrf_token(self.store, token) if who else None)

    async def form(self, request: Request, csrf: str, max_fields: int = 64):
        """The posted form, or None when its CSRF token is wrong (`inputs.FormError` for a body
        that is not a UTF-8 form)."""
        form = await read_form(request, max_fields)
        sent = form.get("csrf", "")
        ok = hmac.compare_digest(sent.encode(), csrf.encode())
        return form if ok else None

    def login_response(self, request: Request, who: Annotator, session_token: str) -> Response:
        """The redirect after a login, setting the session cookie (for the token lifetime,
        when there is one)."""
        # Lax, not Strict: a login link opened from mail or chat is a cross-site navigation,
        # and the redirect after it must carry the cookie. Every POST checks a CSRF token.
        r = RedirectResponse("/admin" if who.is_admin else "/label", 303)
        life = self.store.token_lifetime_s
        r.set_cookie(COOKIE, session_token, httponly=True, samesite="lax", path="/",
                     secure=request.url.scheme == "https",
                     max_age=None if life is None else int(life))
        return r

    async def gate(self, request: Request, admin: bool):
        """(who, csrf, None) for a session of the right role, else (None, None, the response
        to send: to the login page without a session, 403 with the wrong role)."""
        who, csrf = await self.session(request)
        if who is None:
            return None, None, RedirectResponse("/", 303)
        if who.is_admin != admin:
            message = ("The admin page needs an admin token." if admin else
                       "Admins do not label; log in with an annotator token.")
            return None, None, self.error(403, message, who, csrf)
        return who, csrf, None


def _utc(t: float) -> str:
    """A time as `YYYY-MM-DD HH:MM:SS` in UTC."""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
