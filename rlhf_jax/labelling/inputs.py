"""What the labelling app accepts from a request: a bounded body, and a form read strictly.

A form body is read the WHATWG way (application/x-www-form-urlencoded: split on `&` and `=`,
`+` is a space, percent-decode to bytes, then decode UTF-8), except that bytes which are not
UTF-8 are refused with 400 instead of being replaced, so nothing garbled is ever stored. UTF-8
sent unencoded (as `curl -d 'rationale=café'` does) is read as the same text as its
percent-encoded form. A NUL character in any name or value is refused with 422 (PostgreSQL's
text cannot hold one, and SQLite is held to the same rule). Other content types get 415: the
app's pages only send URL-encoded forms.
"""
from __future__ import annotations

from typing import Optional
from urllib.parse import unquote_to_bytes

from fastapi import Request
from fastapi.responses import PlainTextResponse
from starlette.datastructures import FormData

URLENCODED = "application/x-www-form-urlencoded"


class FormError(ValueError):
    """A request body the app will not read as a form; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def small_int(value) -> Optional[int]:
    """A form value made of 1-9 ASCII digits as an int, else None (str.isdigit also accepts
    '²', and int() refuses strings of more than 4300 digits)."""
    if isinstance(value, str) and 0 < len(value) <= 9 and value.isascii() and value.isdigit():
        return int(value)
    return None


def parse_form(body: bytes, max_fields: int) -> FormData:
    """The fields of a URL-encoded body (later fields of one name win in `.get`, as in
    Starlette). Raises FormError: 400 for bytes that are not UTF-8 or too many fields, 422 for
    a NUL character."""
    pairs = [p for p in body.split(b"&") if p]
    if len(pairs) > max_fields:
        raise FormError(400, f"the form has {len(pairs)} fields; at most {max_fields}")
    fields = []
    for pair in pairs:
        raw_name, _, raw_value = pair.partition(b"=")
        name, value = (_decode(unquote_to_bytes(raw.replace(b"+", b" ")))
                       for raw in (raw_name, raw_value))
        if "\x00" in name or "\x00" in value:
            raise FormError(422, f"form field {name.replace(chr(0), '?')[:40]!r} holds a NUL "
                                 "character")
        fields.append((name, value))
    return FormData(fields)


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormError(400, f"the form is not UTF-8 text (byte 0x{raw[e.start]:02x} of a "
                             "field); send it percent-encoded UTF-8") from None


async def read_form(request: Request, max_fields: int) -> FormData:
    """The request's form, read by `parse_form`; FormError (415) for another content type."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if kind != URLENCODED and (kind or body):
        raise FormError(415, f"expected a form sent as {URLENCODED}, got "
                             f"{kind or 'no content type'}")
    return parse_form(body, max_fields)


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
