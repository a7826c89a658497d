"""Hostile input, on SQLite and on PostgreSQL: ids beyond the database's integer range, NUL
characters, form bodies that are not UTF-8 and tasks files holding text that a database cannot
store. Each is refused with a 4xx, or with a named error at startup, and nothing is stored."""
from urllib.parse import urlencode

import pytest

from rlhf_jax import data, labelling
from rlhf_jax.labelling import LabelError, NotFound
from tests.labelling.conftest import app_env, form_fields, run_script

BIG_IDS = ("2147483648", "99999999999", "9223372036854775807", "9223372036854775808",
           "18446744073709551616", "1" * 40, "0", "-1", "1e3", "%C2%B2")
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
def env(db_url):
    store, tokens, client = app_env(db_url)
    yield store, tokens, client
    store.close()


def _label_once(store, c):
    """ann1 labels their first task (t0); returns the label id and the next page's fields."""
    f = form_fields(c.get("/label").text)
    assert c.post("/label", data={**f, "choice": "0", "rationale": "fine"}).status_code == 303
    lid = store.labels()[0].id
    return lid, form_fields(c.get("/label").text)


def test_ids_beyond_the_integer_range_are_not_found(env):
    store, _, client = env
    c = client("ann1")
    lid, f = _label_once(store, c)
    three = {"rank_0": "1", "rank_1": "2", "rank_2": "3"}
    for bad in BIG_IDS:
        assert c.get(f"/labels/{bad}").status_code == 404, bad
        r = c.post(f"/labels/{bad}", data={"csrf": f["csrf"], "rank_0": "1", "rank_1": "2"})
        assert r.status_code == 404, bad
        for path in ("/label", "/skip"):
            r = c.post(path, data={**f, "assignment": bad, **three})
            assert r.status_code == 404, (path, bad)
    for bad in (2 ** 31, 2 ** 63, 2 ** 64, 0, -1, True, "7"):
        with pytest.raises(NotFound):
            store.label(bad, None)
        with pytest.raises(NotFound):
            store.assignment(bad, "ann1")
        with pytest.raises(NotFound):
            store.submit(bad, "ann1", [0, 1, 2])
        with pytest.raises(NotFound):
            store.skip(bad, "ann1")
        with pytest.raises(NotFound):
            store.update_label(bad, "ann1", [0, 1])
    # nothing stored or changed: ann1's one label, and their open assignment is still open
    assert [lab.id for lab in store.labels()] == [lid]
    assert store.assignment(int(f["assignment"]), "ann1").status == "open"
    assert store.check_consistency() == []
    # ranks and ratings with more digits than int() takes
    r = c.post("/label", data={**f, **three, "rank_0": "9" * 5000})
    assert r.status_code == 422 and "rank of response A" in r.text
    r = c.post("/label", data={**f, **three, "rating_0": "9" * 5000})
    assert r.status_code == 422 and "rating of response A" in r.text
    assert len(store.labels()) == 1


def test_nul_characters_are_refused(env):
    store, _, client = env
    c = client("ann1")
    f = form_fields(c.get("/label").text)
    for fields in ({"rationale": "a\x00b"}, {"choice": "0\x00"}, {"csrf": f["csrf"] + "\x00"},
                   {"rat\x00ionale": "x"}):
        r = c.post("/label", data={**f, "choice": "0", **fields})
        assert r.status_code == 422 and "NUL" in r.text, fields
    assert store.labels() == []
    lid, f = _label_once(store, c)
    r = c.post(f"/labels/{lid}", data={"csrf": f["csrf"], "rank_0": "2", "rank_1": "1",
                                       "rationale": "x\x00"})
    assert r.status_code == 422
    assert store.label(lid, "ann1").rationale == "fine"
    # the store refuses such text whoever calls it, and text that is not Unicode too
    for text in ("x\x00", "\ud800", "a\udfffb"):
        with pytest.raises(LabelError, match="rationale"):
            store.update_label(lid, "ann1", [1, 0], rationale=text)
        with pytest.raises(LabelError, match="rationale"):
            store.submit(int(f["assignment"]), "ann1", [0, 1, 2], rationale=text)
    assert [(lab.rationale, lab.ranks) for lab in store.labels()] == [
        ("fine", store.labels()[0].ranks)]
    assert store.assignment(int(f["assignment"]), "ann1").status == "open"
    assert c.post("/login", data={"token": "x\x00"}).status_code in (401, 422)


def test_form_bodies_must_be_utf8(env):
    store, tokens, client = env
    c = client("ann1")
    f = form_fields(c.get("/label").text)
    head = urlencode({**f, "choice": "0"}).encode()
    for raw in (b"%ff", b"\xff", b"%C0%AF", b"%ED%A0%80", b"caf%C3", b"caf\xc3(", b"\xe9t\xe9"):
        r = c.post("/label", content=head + b"&rationale=" + raw, headers=FORM)
        assert r.status_code == 400 and "UTF-8" in r.text, raw
        r = c.post("/label", content=head + b"&" + raw + b"=x", headers=FORM)
        assert r.status_code == 400, raw
    r = client(None).post("/login", content=b"token=" + tokens["ann1"].encode() + b"%ff",
                          headers=FORM)
    assert r.status_code == 400
    # a body that is not a URL-encoded form is refused, not read in some other encoding
    r = c.post("/label", data={**f, "choice": "0"}, files={"rationale": ("r.txt", b"\xff")})
    assert r.status_code == 415
    r = c.post("/label", content=head, headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert store.labels() == []
    # UTF-8 sent raw (as `curl -d 'rationale=café'` does) or percent-encoded is decoded
    r = c.post("/label", content=head + "&rationale=caf\u00e9+%E2%9C%93+\u2713".encode(),
               headers=FORM)
    assert r.status_code == 303
    assert store.labels()[0].rationale == "caf\u00e9 \u2713 \u2713"


@pytest.mark.parametrize("record, field", [
    (r'{"prompt": "p\ud800", "responses": ["a", "b"]}', "prompt"),
    (r'{"prompt": "p", "responses": ["a\u0000", "b"]}', "responses"),
    (r'{"prompt": "p", "responses": ["a", "b"], "meta": {"note": ["\udfff"]}}', "meta"),
    (r'{"prompt": "p", "responses": ["a", "b"], "meta": {"k\u0000": 1}}', "meta"),
    (r'{"prompt": [{"role": "user", "content": "hi\u0000"}], "responses": ["a", "b"]}',
     "prompt"),
    (r'{"prompt": "p", "responses": ["a", "b"], "id": "x\ud83d"}', "id"),
])
def test_tasks_file_text_no_database_stores_is_named(tmp_path, record, field):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"prompt": "ok", "responses": ["x", "y"]}\n' + record + "\n")
    with pytest.raises(data.DataFormatError) as e:
        labelling.read_tasks(path)
    assert f"{path}:2: field '{field}'" in str(e.value)


def test_server_refuses_such_a_tasks_file_at_startup(db_url, tmp_path):
    for name, record in (("surrogate", r'{"prompt": "p\udc80", "responses": ["a", "b"]}'),
                         ("nul", r'{"prompt": "p\u0000", "responses": ["a", "b"]}')):
        (tmp_path / f"{name}.jsonl").write_text(record + "\n")
        r = run_script(f"--config.db={db_url}", f"--config.tasks={name}.jsonl", cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert f"{name}.jsonl:1: field 'prompt'" in r.stderr and "Traceback" not in r.stderr
    store = labelling.LabelStore(db_url)
    for bad in ({"prompt": "p\x00", "responses": ["a", "b"]},
                {"prompt": "p", "responses": ["a", "b\ud800"]},
                {"prompt": "p", "responses": ["a", "b"], "meta": {"x": "\x00"}}):
        with pytest.raises(ValueError, match="task 1"):
            store.add_tasks([{"prompt": "fine", "responses": ["a", "b"]}, bad])
    assert store.num_tasks() == 0
    store.close()
