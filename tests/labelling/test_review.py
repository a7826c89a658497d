"""Quarantine and its audit log, the admin's review of each annotator (reliability, flags, labels
with their rationales) and exports that leave quarantined annotators out, on SQLite and
PostgreSQL."""
import json
import random
import re

import pytest

from rlhf_jax import labelling
from rlhf_jax.labelling import LabelError, NotFound
from tests.labelling.conftest import app_env, form_fields, run_script, simple_tasks


@pytest.fixture
def env(db_url):
    """a, b and c prefer response 0 of each of 6 tasks, d response 1: d agrees with the
    others' majority on none of the 6 pairs."""
    store, tokens, client = app_env(db_url, annotators=("a", "b", "c", "d"),
                                    tasks=simple_tasks(6), labels_per_task=4)
    for k, n in enumerate("abcd"):
        while (x := store.next_assignment(n, random.Random(k))) is not None:
            store.submit(x.id, n, [1, 0] if n == "d" else [0, 1], ratings=[4, None],
                         rationale=f"{n} says <b>{x.task.uid}</b>")
    yield store, tokens, client
    store.close()


def test_quarantine_is_logged_with_who_when_and_why(env):
    store, _, _ = env
    assert store.quarantined() == {} and store.overrides() == []
    assert store.set_quarantine("d", True, "  disagrees with everyone ", by="screen.agreement",
                                now=100.0)
    assert not store.set_quarantine("d", True, "again", by="boss")  # no change, nothing logged
    (o,) = store.overrides()
    assert (o.annotator_id, o.action, o.reason, o.actor, o.at) == (
        "d", "quarantine", "disagrees with everyone", "screen.agreement", 100.0)
    assert store.quarantined() == {"d": o}
    assert store.set_quarantine("d", False, "reviewed: honest disagreement", by="boss")
    assert store.quarantined() == {}
    assert [(x.action, x.actor) for x in store.overrides("d")] == [
        ("quarantine", "screen.agreement"), ("release", "boss")]
    for args, error in [(("d", True, "", "boss"), LabelError),
                        (("d", True, "a\x00b", "boss"), LabelError),
                        (("d", True, "x" * 1001, "boss"), LabelError),
                        (("d", True, "why", ""), LabelError),
                        (("d", True, "why", "x\ud800"), LabelError),
                        (("nobody", True, "why", "boss"), NotFound),
                        (("boss", True, "why", "boss"), NotFound),
                        (("\x00", True, "why", "boss"), NotFound),
                        (("x" * 65, True, "why", "boss"), NotFound)]:
        with pytest.raises(error):
            store.set_quarantine(*args)
    assert len(store.overrides()) == 2


def _row(html, name):
    return re.search(rf'<tr data-annotator="{name}">(.*?)</tr>', html).group(1)


def test_admin_reviews_reliability_flags_and_labels(env):
    store, _, client = env
    boss = client("boss")
    page = boss.get("/admin").text
    assert "<td>0.000</td><td>6</td>" in _row(page, "d")  # reliability over 6 pairs
    assert "low reliability" in _row(page, "d") and "class=\"flag\"" not in _row(page, "a")
    assert "<td>1.000</td><td>6</td>" in _row(page, "a")
    assert 'href="/admin/annotators/d"' in page
    review = boss.get("/admin/annotators/d")
    assert review.status_code == 200
    rows = re.findall(r'<tr><td><a href="/admin/labels/(\d+)">', review.text)
    assert sorted(map(int, rows)) == sorted(lab.id for lab in store.labels("d"))
    assert review.text.count("d says &lt;b&gt;") == 6 and "<b>" not in review.text
    lab = store.labels("d")[0]
    one = boss.get(f"/admin/labels/{lab.id}").text
    expected = "B &gt; A" if lab.shown_order == [0, 1] else "A &gt; B"  # d preferred response 1
    assert f'<strong id="verdict">{expected}</strong>' in one
    assert f"d says &lt;b&gt;{lab.task.uid}&lt;/b&gt;" in one
    # quarantine through the page: logged with the admin's id and the reason
    csrf = form_fields(review.text)["csrf"]
    url = "/admin/annotators/d/quarantine"
    assert boss.post(url, data={"quarantined": "1", "reason": "why"}).status_code == 403
    assert boss.post(url, data={"csrf": csrf, "quarantined": "1"}).status_code == 422
    assert boss.post(url, data={"csrf": csrf, "quarantined": "2", "reason": "x"}
                     ).status_code == 422
    assert boss.post("/admin/annotators/nobody/quarantine",
                     data={"csrf": csrf, "quarantined": "1", "reason": "x"}).status_code == 404
    assert store.overrides() == []
    r = boss.post(url, data={"csrf": csrf, "quarantined": "1", "reason": "always <i>B</i>"})
    assert r.status_code == 303 and r.headers["location"] == "/admin/annotators/d"
    (o,) = store.overrides()
    assert (o.actor, o.reason, o.action) == ("boss", "always <i>B</i>", "quarantine")
    page = boss.get("/admin").text
    assert '<span class="flag">quarantined</span>' in _row(page, "d")
    assert "always &lt;i&gt;B&lt;/i&gt;" in page and "<td>boss</td>" in page
    assert "Release from quarantine" in boss.get("/admin/annotators/d").text
    # nobody else reaches these pages, and ids that name nothing are 404s
    ann = client("a")
    assert ann.get("/admin/annotators/d").status_code == 403
    assert ann.post(url, data={"csrf": form_fields(ann.get("/label").text)["csrf"],
                               "quarantined": "0", "reason": "x"}).status_code == 403
    assert client(None).get(f"/admin/labels/{lab.id}").status_code == 303
    for bad in ("nobody", "%00", "%ff", "boss"):
        assert boss.get(f"/admin/annotators/{bad}").status_code == 404, bad
    for bad in ("2147483648", "9223372036854775808", "0", "x"):
        assert boss.get(f"/admin/labels/{bad}").status_code == 404, bad
    assert len(store.overrides()) == 1


def test_exports_can_leave_quarantined_annotators_out(env, db_url, tmp_path):
    store, _, client = env
    store.set_quarantine("d", True, "always prefers B", by="boss")
    boss = client("boss")
    everyone = boss.get("/admin/export/pairwise.jsonl")
    assert len(everyone.text.splitlines()) == 24 and "x-left-out-annotators" not in \
        everyone.headers
    some = boss.get("/admin/export/pairwise.jsonl", params={"without_quarantined": "1"})
    rows = [json.loads(line) for line in some.text.splitlines()]
    assert len(rows) == 18 and {r["annotator_id"] for r in rows} == {"a", "b", "c"}
    assert some.headers["x-left-out-annotators"] == "d"
    assert some.headers["x-left-out-labels"] == "6"
    assert "Left out of the second kind of export: d" in boss.get("/admin").text
    manifest = labelling.export_all(store.labels(), tmp_path / "all", (1, 7))
    assert "left_out" not in manifest and manifest["files"]["pairwise"]["records"] == 24
    manifest = labelling.export_all(store.labels(), tmp_path / "kept", (1, 7),
                                    leave_out_annotators=store.quarantined())
    assert manifest["left_out"] == {"annotators": ["d"], "labels": 6}
    assert manifest["files"]["pairwise"]["records"] == 18
    r = run_script(f"--config.db={db_url}", "--config.export_to=cli",
                   "--config.export_without_quarantined=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "left out 6 labels of quarantined annotators: d" in r.stdout
    written = json.loads((tmp_path / "cli" / "export.json").read_text())
    assert written["left_out"] == {"annotators": ["d"], "labels": 6}
    assert len((tmp_path / "cli" / "pairwise.jsonl").read_text().splitlines()) == 18


def test_verdicts_are_in_the_letters_shown(env):
    store, _, _ = env
    lab = store.labels()[0]
    make = lambda **kw: lab.__class__(**{**lab.__dict__, **kw})  # noqa: E731
    from rlhf_jax.labelling.admin import verdict

    assert verdict(make(ranks=[0, 1], shown_order=[1, 0])) == "B > A"
    assert verdict(make(ranks=[0, 0], shown_order=[1, 0])) == "A = B"
    assert verdict(make(ranks=[2, 0, 0], shown_order=[2, 0, 1])) == "A = C > B"
