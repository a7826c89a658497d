"""The labelling app's pages in-process (Starlette's test client): login, labelling, ownership,
CSRF, limits, the admin page and export."""
import json
import random
import re

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from rlhf_jax import data, labelling
from tests.labelling.conftest import app_env, form_fields

XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


@pytest.fixture
def env(tmp_path):
    settings = labelling.AppSettings(likert=(1, 5), rationale_max_chars=50,
                                     max_request_bytes=4096)
    store, tokens, client = app_env(
        f"sqlite:///{tmp_path / 'l.sqlite'}", settings,
        tasks=[{"prompt": "p0", "responses": ["alpha", "beta"], "id": "t0"},
               {"prompt": "p1 " + XSS, "responses": ["one", "two", XSS], "id": "t1"}])
    yield store, tokens, client
    store.close()


def test_login_link_sets_a_cookie_and_bad_tokens_are_refused(env):
    store, tokens, client = env
    anon = client(None)
    assert anon.get("/label").headers["location"] == "/"
    assert anon.get("/login", params={"token": "nope"}).status_code == 401
    r = anon.get("/login", params={"token": tokens["ann1"]})
    assert r.status_code == 303 and r.headers["location"] == "/label"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    r = anon.post("/login", data={"token": tokens["boss"]})
    assert r.headers["location"] == "/admin"
    # tokens are stored hashed: no raw token anywhere in the database
    with store.engine.connect() as c:
        stored = [row.token_hash for row in c.execute(sa.text("select token_hash from annotators"))]
    assert len(stored) == 4 and not set(tokens.values()) & set(stored)
    assert labelling.store.hash_token(tokens["ann1"]) in stored


def test_pairwise_label_maps_shown_positions_to_responses(env):
    store, _, client = env
    c = client("ann1")
    page = c.get("/label")
    assert page.status_code == 200
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    f = form_fields(page.text)
    a = store.assignment(int(f["assignment"]), "ann1")
    assert a.task.uid == "t0" and sorted(a.shown_order) == [0, 1]
    # the page shows the responses in the stored order
    shown = re.findall(r'<section class="response" id="response-(\w)">\s*<h2>[^<]*</h2>\s*'
                       r'<pre class="text">([^<]*)</pre>', page.text)
    assert [t for _, t in shown] == [a.task.responses[i] for i in a.shown_order]
    r = c.post("/label", data={**f, "choice": "1", "rating_0": "2", "rating_1": "5",
                               "rationale": "  B reads better  "})
    assert r.status_code == 303 and r.headers["location"].startswith("/label?saved=")
    lab = store.labels("ann1")[0]
    chosen = a.shown_order[1]  # "1" is the second shown position
    assert lab.ranks[chosen] == 0 and lab.ranks[1 - chosen] == 1
    assert lab.ratings[a.shown_order[0]] == 2 and lab.ratings[chosen] == 5
    assert lab.rationale == "B reads better" and lab.shown_order == a.shown_order
    assert "saved" in c.get(r.headers["location"]).text
    # a resent form does not make a second label
    assert c.post("/label", data={**f, "choice": "0"}).status_code == 303
    assert len(store.labels("ann1")) == 1 and store.labels("ann1")[0].ranks == lab.ranks


def test_ranking_tie_skip_and_validation(env):
    store, _, client = env
    c = client("ann2")
    f = form_fields(c.get("/label").text)
    assert c.post("/label", data={**f, "choice": "tie"}).status_code == 303
    assert store.labels("ann2")[0].ranks == [0, 0]
    page = c.get("/label").text
    f = form_fields(page)
    a = store.assignment(int(f["assignment"]), "ann2")
    assert len(a.task.responses) == 3
    bad = c.post("/label", data={**f, "rank_0": "1", "rank_1": "9", "rank_2": "2"})
    assert bad.status_code == 422 and "rank of response B" in bad.text
    bad = c.post("/label", data={**f, "rank_0": "1", "rank_1": "2", "rank_2": "3",
                                 "rating_0": "6"})
    assert bad.status_code == 422 and "expected 1 to 5" in bad.text
    bad = c.post("/label", data={**f, "rank_0": "1", "rank_1": "2", "rank_2": "3",
                                 "rationale": "x" * 51})
    assert bad.status_code == 422 and "at most 50" in bad.text
    assert "x" * 51 in bad.text  # the form comes back as sent, for correction
    ok = c.post("/label", data={**f, "rank_0": "2", "rank_1": "1", "rank_2": "2"})
    assert ok.status_code == 303
    lab = store.labels("ann2")[1]
    assert [lab.ranks[i] for i in a.shown_order] == [1, 0, 1]
    # nothing left for ann2; ann3 skips one task and it is not shown to them again
    assert "Nothing left" in c.get("/label").text
    c3 = client("ann3")
    f = form_fields(c3.get("/label").text)
    first = store.assignment(int(f["assignment"]), "ann3").task.uid
    assert c3.post("/skip", data=f).status_code == 303
    f2 = form_fields(c3.get("/label").text)
    assert store.assignment(int(f2["assignment"]), "ann3").task.uid != first
    assert store.progress("ann3")["skipped"] == 1


def test_escaping_of_model_text(env):
    _, _, client = env
    c = client("ann1")
    f = form_fields(c.get("/label").text)
    c.post("/label", data={**f, "choice": "0"})
    page = c.get("/label").text
    assert "<script>window.__xss" not in page and "onerror=\"window" not in page
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in page


def test_csrf_and_ownership(env):
    store, tokens, client = env
    c1, c2 = client("ann1"), client("ann2")
    f1 = form_fields(c1.get("/label").text)
    f2 = form_fields(c2.get("/label").text)
    assert c1.post("/label", data={"assignment": f1["assignment"], "choice": "0"}
                   ).status_code == 403  # no CSRF token
    assert c1.post("/label", data={**f1, "csrf": f2["csrf"], "choice": "0"}
                   ).status_code == 403  # another session's CSRF token
    # ann2 cannot answer or skip ann1's assignment, even with a valid form of their own
    assert c2.post("/label", data={**f2, "assignment": f1["assignment"], "choice": "0"}
                   ).status_code == 403
    assert c2.post("/skip", data={**f2, "assignment": f1["assignment"]}).status_code == 403
    assert c1.post("/label", data={**f1, "choice": "0"}).status_code == 303
    lid = store.labels("ann1")[0].id
    assert c1.get(f"/labels/{lid}").status_code == 200
    assert c2.get(f"/labels/{lid}").status_code == 403
    assert c2.post(f"/labels/{lid}", data={**f2, "choice": "1"}).status_code == 403
    assert c2.get("/labels/999").status_code == 404
    assert store.labels("ann1")[0].ranks == store.label(lid, "ann1").ranks
    # the owner may change their label
    before = store.label(lid, "ann1")
    r = c1.post(f"/labels/{lid}", data={**f1, "rank_0": "2", "rank_1": "1",
                                        "rationale": "changed my mind"})
    assert r.status_code == 303
    after = store.label(lid, "ann1")
    assert after.ranks == [1 - x for x in before.ranks] and after.rationale == "changed my mind"
    assert after.updated_at is not None
    # annotators cannot reach the admin pages
    assert c1.get("/admin").status_code == 403
    assert c1.get("/admin/export/pairwise.jsonl").status_code == 403
    assert client(None).get("/admin").status_code == 303


def test_request_size_is_bounded(env):
    _, _, client = env
    c = client("ann1")
    f = form_fields(c.get("/label").text)
    r = c.post("/label", data={**f, "choice": "0", "rationale": "y" * 5000})
    assert r.status_code == 413

    def chunks():  # no Content-Length: the body is counted as it streams
        for _ in range(10):
            yield b"rationale=" + b"z" * 1000
    r = c.post("/label", content=chunks(),
               headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413


def test_admin_page_and_export_round_trip(env, tmp_path):
    store, _, client = env
    rng = random.Random(0)
    for name in ("ann1", "ann2", "ann3"):
        c = client(name)
        while True:
            page = c.get("/label").text
            if "Nothing left" in page:
                break
            f = form_fields(page)
            n = int(re.search(r'data-responses="(\d)"', page).group(1))
            fields = {"choice": rng.choice("01")} if n == 2 else {
                f"rank_{p}": str(r + 1) for p, r in enumerate(rng.sample(range(n), n))}
            fields |= {f"rating_{p}": str(rng.randint(1, 5)) for p in range(n)}
            assert c.post("/label", data={**f, **fields, "rationale": f"by {name}"}
                          ).status_code == 303
    assert len(store.labels()) == 4  # 2 tasks x 2 labels each
    admin = client("boss")
    page = admin.get("/admin")
    assert page.status_code == 200 and "Krippendorff" in page.text and "ann3" in page.text
    exported = admin.get("/admin/export/pairwise.jsonl")
    assert exported.status_code == 200
    rows = [json.loads(line) for line in exported.text.splitlines()]
    assert len(rows) == 2 and {r["task_id"] for r in rows} == {"t0"}
    assert all(r["rationale"].startswith("by ann") for r in rows)
    manifest = labelling.export_all(store.labels(), tmp_path / "out", (1, 5))
    assert manifest["files"]["ranking"]["records"] == 4
    for kind in ("pairwise", "ranking", "rating"):
        recs, stats = data.read_records(tmp_path / "out" / f"{kind}.jsonl", kind,
                                        rating_range=(1, 5))
        assert stats.skipped == 0 and all(r["annotator_id"].startswith("ann") for r in recs)
        assert all(r["rationale"].startswith("by ann") for r in recs)
    assert len(recs) == 2 * 2 + 2 * 3  # every response of every label is rated


def test_logout_everywhere_odd_input_and_no_stale_answers(env):
    store, _, client = env
    admin = client("boss")
    page = admin.get("/admin").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    r = admin.post("/logout", data={"csrf": csrf})
    assert r.status_code == 303 and admin.get("/admin").status_code == 303  # logged out
    c = client("ann1")
    f = form_fields(c.get("/label").text)
    # values that str.isdigit accepts but int() does not, and non-ASCII CSRF tokens
    assert c.post("/label", data={**f, "assignment": "²", "choice": "0"}).status_code == 404
    assert c.post("/label", data={**f, "csrf": "é", "choice": "0"}).status_code == 403
    bad = c.post("/label", data={**f, "rank_0": "²", "rank_1": "1"})
    assert bad.status_code == 422
    # an answer to a task given back (skipped) is refused, and the next task's form is empty
    assert c.post("/skip", data=f).status_code == 303
    r = c.post("/label", data={**f, "choice": "1", "rationale": "stale answer"})
    assert r.status_code == 422 and "was skipped" in r.text
    assert "stale answer" not in r.text and "checked" not in r.text
    assert form_fields(r.text)["assignment"] != f["assignment"]


def test_conversation_tasks_are_shown_by_role_and_export_as_conversations(tmp_path):
    """A tasks file whose prompts are conversations (TRL's message lists): each turn is shown
    with its role, and every export kind writes conversational records that the data reader
    takes back."""
    u = lambda t: {"role": "user", "content": t}  # noqa: E731
    a = lambda t: {"role": "assistant", "content": t}  # noqa: E731
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": [{"role": "system", "content": "be brief"}, u("hi"), a("hello"),
                    u("a colour? " + XSS)],
         "responses": [[a("blue")], [a("green")]], "id": "c0"},
        {"prompt": "plain prompt", "responses": ["x", "y"], "id": "p0"}]))
    store = labelling.LabelStore(f"sqlite:///{tmp_path / 'c.sqlite'}", labels_per_task=1)
    store.add_tasks(labelling.read_tasks(tasks))
    token = store.add_annotator("ann")
    app = labelling.create_app(store, labelling.AppSettings(likert=(1, 5)))
    c = TestClient(app, base_url="http://127.0.0.1", follow_redirects=False)
    c.get("/login", params={"token": token})
    for _ in range(2):
        page = c.get("/label").text
        f = form_fields(page)
        if store.assignment(int(f["assignment"]), "ann").task.uid == "c0":
            turns = re.findall(r'<li class="turn (\w+)"><span class="role">(\w+)</span>'
                               r'<pre class="text">([^<]*)</pre>', page)
            assert [(r, t) for r, _, t in turns] == [
                ("system", "be brief"), ("user", "hi"), ("assistant", "hello"),
                ("user", "a colour? &lt;script&gt;window.__xss = 1&lt;/script&gt;&lt;img "
                         "src=x onerror=&#34;window.__xss = 2&#34;&gt;")]
        assert c.post("/label", data={**f, "choice": "0", "rating_0": "4", "rating_1": "2"}
                      ).status_code == 303
    manifest = labelling.export_all(store.labels(), tmp_path / "out", (1, 5))
    assert manifest["files"]["pairwise"]["records"] == 2
    for kind in ("pairwise", "ranking", "rating"):
        recs, _ = data.read_records(tmp_path / "out" / f"{kind}.jsonl", kind,
                                    rating_range=(1, 5))
        conv = [r for r in recs if isinstance(r["prompt"], list)]
        assert conv and conv[0]["prompt"][0] == {"role": "system", "content": "be brief"}
        assert all(isinstance(x, list) and x[0]["role"] == "assistant"
                   for r in conv for x in r["responses"])
        assert any(isinstance(r["prompt"], str) for r in recs)  # the plain task stays plain
    with pytest.raises(data.DataFormatError, match=r"tasks.jsonl:1: field 'prompt' must end on "
                                                   r"a user turn"):
        tasks.write_text(json.dumps({"prompt": [u("q"), a("x")], "responses": ["a", "b"]}))
        labelling.read_tasks(tasks)
