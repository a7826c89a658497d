"""The labelling app in a real browser (headless Chromium driven by Playwright): model text that
tries to run script does not, keyboard shortcuts work, and the admin page renders."""
import re

import pytest

from tests.labelling.conftest import Server, write_tasks

XSS = [
    '<script>window.__xss = "script"; alert(1)</script>',
    '<img src=x onerror="window.__xss = \'onerror\'; alert(2)">',
    '"><svg onload="window.__xss = \'svg\'">',
]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.mark.slow
def test_labelling_in_chromium(tmp_path, browser):
    write_tasks(tmp_path / "tasks.jsonl", [
        {"prompt": "Say hi " + XSS[2], "responses": [XSS[0], XSS[1]], "id": "xss"},
        {"prompt": "Second", "responses": ["plain one", "plain two"], "id": "plain"},
        {"prompt": "Third", "responses": ["r1", "r2", "r3"], "id": "three"}])
    (tmp_path / "guidelines.md").write_text("# Be *fair*\n\n- read both " + XSS[0] + "\n")
    server = Server(tmp_path, "--config.db=l.sqlite", "--config.tasks=tasks.jsonl",
                    "--config.annotators=ann", "--config.labels_per_task=1",
                    "--config.guidelines=guidelines.md")
    try:
        page = browser.new_page()
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(server.links["ann"])
        assert page.url.endswith("/label")
        # the hostile texts are shown as text and nothing of them ran
        assert page.evaluate("window.__xss") is None and dialogs == []
        assert page.locator("img").count() == 0 and page.locator("svg").count() == 0
        shown = page.locator("section.response pre.text").all_inner_texts()
        assert sorted(shown) == sorted(XSS[:2])
        assert XSS[2] in page.inner_text("#prompt")
        # the guidelines are shown as written (their <script> as text), the choice is required
        assert page.inner_text("#guidelines h3") == "Be fair"
        assert XSS[0] in page.inner_text("#guidelines li")
        assert page.locator("#guidelines em").inner_text() == "fair"
        assert "required" in page.inner_text("#choice legend")
        assert page.evaluate("document.querySelector('input[name=choice]').required")
        page.screenshot(path=str(tmp_path / "label.png"), full_page=True)
        # typing in the rationale box is not a shortcut
        page.click("textarea[name=rationale]")
        page.keyboard.type("2s <b>bold</b>")
        assert not page.is_checked("input[name=choice][value='1']")
        page.click("h2 >> nth=0")  # focus leaves the text box
        page.keyboard.press("2")
        assert page.is_checked("input[name=choice][value='1']")
        page.keyboard.press("t")
        assert page.is_checked("input[name=choice][value='tie']")
        page.keyboard.press("1")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert re.search(r"/label\?saved=\d+$", page.url)
        assert "saved" in page.inner_text(".saved")
        assert "Labelled 1" in page.inner_text("#progress")
        assert "Second" in page.inner_text("#prompt")
        with page.expect_navigation():
            page.keyboard.press("s")  # skip the second task
        assert "Third" in page.inner_text("#prompt")
        # three responses: ranks through the selects, a rating, then Enter
        for pos, rank in enumerate(("2", "1", "3")):
            page.select_option(f"select[name=rank_{pos}]", rank)
        page.check("input[name=rating_0][value='6']")
        page.click("h2 >> nth=0")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert "Nothing left" in page.inner_text("h1")
        page.goto(server.url + "/admin")
        assert "admin token" in page.inner_text("body")  # annotators get 403
        admin = browser.new_page()
        server_admin = server.links["admin"]
        admin.goto(server_admin)
        assert admin.url.endswith("/admin")
        rows = admin.locator("#annotators tr").all_inner_texts()
        assert any(r.startswith("ann\t2\t1") for r in rows), rows
        admin.screenshot(path=str(tmp_path / "admin.png"), full_page=True)
    finally:
        server.stop()
    from rlhf_jax.labelling import LabelStore

    store = LabelStore(f"sqlite:///{tmp_path / 'l.sqlite'}")
    labs = {lab.task.uid: lab for lab in store.labels()}
    first = labs["xss"]
    assert first.rationale == "2s <b>bold</b>" and first.ranks[first.shown_order[0]] == 0
    third = labs["three"]
    assert [third.ranks[i] for i in third.shown_order] == [1, 0, 2]
    assert third.ratings[third.shown_order[0]] == 6
    store.close()


@pytest.mark.slow
def test_login_link_opened_from_another_site(tmp_path, browser):
    """A login link in mail or chat is a cross-site navigation: the annotator must still land
    on their labelling page (the session cookie is SameSite=Lax, not Strict)."""
    import functools
    import http.server
    import threading

    write_tasks(tmp_path / "tasks.jsonl", [{"prompt": "p", "responses": ["x", "y"]}])
    server = Server(tmp_path, "--config.db=l.sqlite", "--config.tasks=tasks.jsonl",
                    "--config.annotators=ann")
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "index.html").write_text(
        f'<a id="login" href="{server.links["ann"]}">your labelling link</a>')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(tmp_path / "mail"))
    mail = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=mail.serve_forever, daemon=True).start()
    try:
        page = browser.new_page()
        page.goto(f"http://localhost:{mail.server_address[1]}/")  # another site
        with page.expect_navigation():
            page.click("#login")
        page.wait_for_load_state()
        assert page.url.endswith("/label") and page.inner_text("#prompt") == "p"
    finally:
        mail.shutdown()
        server.stop()
