"""Guidelines for annotators (a Markdown file given at start, rendered safely) and the marking
of the required choice on the labelling page."""
import re

import pytest

from rlhf_jax import labelling
from rlhf_jax.labelling.guidelines import read_guidelines, render_markdown
from rlhf_jax.labelling.server import app_settings
from tests.labelling.conftest import app_env, form_fields, run_script, simple_tasks

GUIDELINES = """# Judge *helpfulness*

Prefer the response that **answers the question**; see [the rubric](https://example.org/r?a=1&b=2).
Never trust <script>window.__xss = 1</script> or <img src=x onerror="alert(1)">.

- short is fine
- `code` counts
  as text

1. read both
2. choose

> a quoted example

```
<b>kept as text</b>
```
[bad link](javascript:alert(1))
"""


def test_markdown_is_rendered_from_a_safe_subset():
    html = render_markdown(GUIDELINES)
    assert "<h3>Judge <em>helpfulness</em></h3>" in html
    assert "<strong>answers the question</strong>" in html
    assert '<a href="https://example.org/r?a=1&amp;b=2" rel="noreferrer">the rubric</a>' in html
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html
    assert "<ul><li>short is fine</li><li><code>code</code> counts as text</li></ul>" in html
    assert "<ol><li>read both</li><li>choose</li></ol>" in html
    assert "<blockquote><p>a quoted example</p></blockquote>" in html
    assert "<pre><code>&lt;b&gt;kept as text&lt;/b&gt;</code></pre>" in html
    assert "javascript:" not in re.sub(r">[^<]*<", "><", html)  # only as text, never a link
    tags = set(re.findall(r"</?([a-z0-9]+)", html))
    assert tags <= {"h3", "p", "em", "strong", "a", "ul", "ol", "li", "code", "blockquote",
                    "pre"}
    assert render_markdown("") == ""


def test_guidelines_files_that_cannot_be_read_are_named(tmp_path):
    path = tmp_path / "g.md"
    path.write_bytes(b"# ok\n\nline two \xff\n")
    with pytest.raises(ValueError, match=r"g.md:3: not UTF-8"):
        read_guidelines(path)
    path.write_bytes(b"# ok\nnul \x00 here\n")
    with pytest.raises(ValueError, match=r"g.md:2: holds a NUL"):
        read_guidelines(path)
    with pytest.raises(ValueError, match=r"missing.md"):
        read_guidelines(tmp_path / "missing.md")
    path.write_text("\ufeff# with a byte-order mark\n", encoding="utf-8")
    assert read_guidelines(path) == "# with a byte-order mark\n"
    cfg = labelling.LabelServerConfig(guidelines=str(path))
    assert app_settings(cfg).guidelines == "# with a byte-order mark\n"
    (tmp_path / "t.jsonl").write_text('{"prompt": "p", "responses": ["a", "b"]}\n')
    r = run_script("--config.tasks=t.jsonl", "--config.guidelines=missing.md", cwd=tmp_path)
    assert r.returncode == 2 and "guidelines:" in r.stderr and "missing.md" in r.stderr
    assert "Traceback" not in r.stderr


def test_label_page_shows_guidelines_and_marks_the_required_choice(tmp_path):
    settings = labelling.AppSettings(likert=(1, 5), guidelines=GUIDELINES,
                                     require_rationale=True)
    tasks = simple_tasks(1) + [{"prompt": "rank", "responses": ["x", "y", "z"], "id": "three"}]
    store, _, client = app_env(f"sqlite:///{tmp_path / 'l.sqlite'}", settings,
                               annotators=("ann",), tasks=tasks, labels_per_task=1)
    c = client("ann")
    page = c.get("/label").text
    assert '<details class="guidelines" id="guidelines" open>' in page
    assert "<strong>answers the question</strong>" in page and "<script>window" not in page
    choice = re.search(r'<fieldset class="choice".*?</fieldset>', page, re.S).group(0)
    assert "* required" in choice and choice.count(" required ") == 3  # every radio
    assert re.search(r'<textarea name="rationale"[^>]* required>', page)
    assert "Why? <span class=\"required\"" in page
    assert "(optional)" in page  # the ratings stay optional
    f = form_fields(page)
    assert c.post("/label", data={**f, "choice": "0", "rationale": "ok"}).status_code == 303
    page = c.get("/label").text  # three responses: each rank is required and marked
    assert page.count('required aria-required="true"') == 3
    assert page.count("* required") == 4  # three ranks and the rationale
    store.close()
    store, _, client = app_env(f"sqlite:///{tmp_path / 'p.sqlite'}", annotators=("ann",))
    assert "guidelines" not in client("ann").get("/label").text  # none given: none shown
    store.close()
