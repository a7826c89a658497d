"""A task's guidelines for annotators: a Markdown file read at start and rendered safely.

The renderer knows a small subset of Markdown (no library is needed for it): `#` headings,
paragraphs, `-`/`*`/`+` and numbered lists, `>` quotes, fenced code blocks, `---` rules and,
inline, `` `code` ``, `**bold**`, `*italic*` and `[links](https://…)` (http, https and mailto
only; any other link stays text). Every piece of the file's text is HTML-escaped and only the
renderer's own tags are emitted, so raw HTML in the file is shown as text, never run.
"""
from __future__ import annotations

import re
from pathlib import Path

from markupsafe import escape

from rlhf_jax.labelling.entities import unstorable

MAX_BYTES = 1 << 20
_SPAN = re.compile(r"`(?P<code>[^`]+)`|\[(?P<text>[^\]]+)\]\((?P<url>[^)\s]+)\)"
                   r"|\*\*(?P<strong>.+?)\*\*|\*(?P<em>[^*\s][^*]*)\*")
_SAFE_URL = re.compile(r"(https?://|mailto:)", re.IGNORECASE)
_HEADING = re.compile(r"(#{1,6})\s+(.*?)\s*#*\s*$")
_ITEM = re.compile(r"\s{0,3}(?:(?P<ul>[-*+])|(?P<ol>\d{1,9})[.)])\s+(?P<text>.*)$")
_RULE = re.compile(r"\s{0,3}([-*_])(\s*\1){2,}\s*$")


def read_guidelines(path) -> str:
    """The Markdown text of the file at `path`. ValueError naming the file (and line) when it
    cannot be read, is over 1 MiB, is not UTF-8 or holds a NUL character."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror or e}") from None
    if len(raw) > MAX_BYTES:
        raise ValueError(f"{path}: {len(raw)} bytes; guidelines of at most {MAX_BYTES} bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    if unstorable(text):
        raise ValueError(f"{path}:{text[:text.index(chr(0))].count(chr(10)) + 1}: holds a NUL "
                         "character")
    return text


def render_inline(text: str) -> str:
    """One line's inline Markdown as HTML, every piece of `text` escaped."""
    out, pos = [], 0
    for m in _SPAN.finditer(text):
        out.append(str(escape(text[pos:m.start()])))
        if m["code"] is not None:
            out.append(f"<code>{escape(m['code'])}</code>")
        elif m["url"] is not None:
            if _SAFE_URL.match(m["url"]):
                out.append(f'<a href="{escape(m["url"])}" rel="noreferrer">'
                           f'{render_inline(m["text"])}</a>')
            else:
                out.append(str(escape(m.group(0))))
        elif m["strong"] is not None:
            out.append(f"<strong>{render_inline(m['strong'])}</strong>")
        else:
            out.append(f"<em>{render_inline(m['em'])}</em>")
        pos = m.end()
    out.append(str(escape(text[pos:])))
    return "".join(out)


def render_markdown(text: str) -> str:
    """The module's Markdown subset as HTML (empty text: empty HTML)."""
    html: list[str] = []
    para: list[str] = []  # lines of the open paragraph or quote
    quote = False
    items: list[str] = []  # items of the open list
    list_tag = ""

    def close() -> None:
        nonlocal quote, list_tag
        if para:
            body = f"<p>{render_inline(' '.join(para))}</p>"
            html.append(f"<blockquote>{body}</blockquote>" if quote else body)
            para.clear()
        if items:
            html.append(f"<{list_tag}>" + "".join(f"<li>{render_inline(i)}</li>" for i in items)
                        + f"</{list_tag}>")
            items.clear()
        quote, list_tag = False, ""

    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.lstrip().startswith("```"):
            close()
            code = []
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                code.append(lines[i])
                i += 1
            i += 1  # the closing fence (or the end)
            html.append(f"<pre><code>{escape(chr(10).join(code))}</code></pre>")
        elif not line.strip():
            close()
        elif m := _HEADING.match(line):
            close()
            level = min(len(m[1]) + 2, 6)  # the page has its own h1 and h2
            html.append(f"<h{level}>{render_inline(m[2])}</h{level}>")
        elif _RULE.match(line):
            close()
            html.append("<hr>")
        elif m := _ITEM.match(line):
            tag = "ul" if m["ul"] else "ol"
            if para or tag != list_tag:
                close()
            list_tag = tag
            items.append(m["text"].strip())
        elif items and line[:1].isspace():
            items[-1] += " " + line.strip()  # an item's continued line
        elif line.lstrip().startswith(">"):
            if not quote or items:
                close()
            quote = True
            para.append(line.lstrip()[1:].strip())
        else:
            if quote or items:
                close()
            para.append(line.strip())
    close()
    return "\n".join(html)
