"""Sessions on SQLite and PostgreSQL: logging out ends a session on the server, a new login token
ends the old one's sessions, and login tokens and sessions given a lifetime expire."""
import time

import pytest
import sqlalchemy as sa

from rlhf_jax import labelling
from rlhf_jax.labelling.web import COOKIE
from tests.labelling.conftest import app_env, form_fields


@pytest.fixture
def env(db_url):
    store, tokens, client = app_env(db_url)
    yield store, tokens, client
    store.close()


def test_logout_revokes_the_session_on_the_server(env):
    store, tokens, client = env
    c = client("ann1")
    old = c.cookies[COOKIE]
    assert old != tokens["ann1"]  # the cookie holds a session, not the login token
    f = form_fields(c.get("/label").text)
    r = c.post("/logout", data={"csrf": f["csrf"]})
    assert r.status_code == 303 and store.session(old) is None
    # the old cookie, replayed (copied before logging out), is refused
    replay = client(None)
    replay.cookies.set(COOKIE, old)
    assert replay.get("/label").headers["location"] == "/"
    assert replay.get("/labels").status_code == 303
    assert replay.post("/label", data={**f, "choice": "0"}).headers["location"] == "/"
    assert replay.post("/logout", data={"csrf": f["csrf"]}).status_code == 403
    assert store.labels() == []
    # the login link still works and opens a new session; another session is not touched
    other = client("ann1")
    assert other.get("/label").status_code == 200
    again = client("ann1")
    g = form_fields(again.get("/label").text)
    assert again.post("/logout", data={"csrf": g["csrf"]}).status_code == 303
    assert other.get("/label").status_code == 200
    # an admin's session ends the same way
    boss = client("boss")
    cookie = boss.cookies[COOKIE]
    csrf = form_fields(boss.get("/admin").text)["csrf"]
    assert boss.post("/logout", data={"csrf": csrf}).status_code == 303
    replay.cookies.set(COOKIE, cookie)
    assert replay.get("/admin").status_code == 303


def test_a_new_login_token_ends_the_old_sessions(env):
    store, tokens, client = env
    c = client("ann2")
    assert c.get("/label").status_code == 200
    new = store.reissue_token("ann2")
    assert c.get("/label").status_code == 303  # the leaked cookie stops working too
    assert client(None).get("/login", params={"token": tokens["ann2"]}).status_code == 401
    assert client(None).get("/login", params={"token": new}).status_code == 303
    assert store.end_session("not a session") is False and store.end_session("") is False


def test_tokens_and_sessions_with_a_lifetime_expire(db_url):
    hour = 3600.0
    store = labelling.LabelStore(db_url, token_lifetime_s=hour)
    t0 = time.time()
    token = store.add_annotator("ann", now=t0)
    assert store.authenticate(token, now=t0 + hour - 1).id == "ann"
    assert store.authenticate(token, now=t0 + hour) is None
    who, session = store.open_session(token, now=t0 + 10)
    assert who.id == "ann" and store.session(session, now=t0 + 10 + hour - 1).id == "ann"
    assert store.session(session, now=t0 + 10 + hour) is None
    assert store.open_session(token, now=t0 + hour + 1) is None
    # a reissued token lasts from when it was issued (and ended the sessions before it)
    fresh = store.reissue_token("ann", now=t0 + 5 * hour)
    assert store.session(session, now=t0 + 10) is None
    assert store.authenticate(fresh, now=t0 + 6 * hour - 1).id == "ann"
    # opening a session deletes the sessions past the lifetime
    _, session = store.open_session(fresh, now=t0 + 5 * hour)
    other = store.add_annotator("other", now=t0 + 6 * hour)
    store.open_session(other, now=t0 + 6 * hour)
    with store.engine.connect() as c:
        assert c.execute(sa.text("select count(*) from sessions")).scalar() == 1
    # without a lifetime (the default) nothing expires
    forever = labelling.LabelStore(db_url)
    assert forever.authenticate(fresh, now=t0 + 1e9).id == "ann"
    assert forever.session(session) is None  # deleted above, past its lifetime
    _, kept = forever.open_session(fresh)
    assert forever.session(kept, now=t0 + 1e9).id == "ann"
    with pytest.raises(ValueError, match="token_lifetime_s"):
        labelling.LabelStore(db_url, token_lifetime_s=0)
    forever.close()
    store.close()


def test_expired_links_and_cookies_are_refused_by_the_app(db_url):
    store, tokens, client = app_env(db_url, token_lifetime_s=3600.0)
    c = client("ann1")
    assert "max-age=3600" in c.get("/login", params={"token": tokens["ann1"]}
                                   ).headers["set-cookie"].lower()
    old = store.reissue_token("ann3", now=time.time() - 3601)
    r = client(None).get("/login", params={"token": old})
    assert r.status_code == 401 and "expired" in r.text
    assert client(None).post("/login", data={"token": old}).status_code == 401
    _, session = store.open_session(tokens["ann1"], now=time.time() - 3601)
    stale = client(None)
    stale.cookies.set(COOKIE, session)
    assert stale.get("/label").headers["location"] == "/"
    assert c.get("/label").status_code == 200  # the session opened just now still works
    store.close()


def test_a_database_from_before_sessions_is_upgraded(db_url):
    """An annotators table without token_issued_at (as earlier versions made it) gets the
    column; tokens issued then count from when the annotator was added."""
    engine = sa.create_engine(db_url)
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE annotators (id VARCHAR(64) PRIMARY KEY, token_hash "
                          "VARCHAR(64) NOT NULL UNIQUE, role VARCHAR(16) NOT NULL, "
                          "created_at FLOAT NOT NULL)")
        c.execute(sa.text("INSERT INTO annotators VALUES ('old', :h, 'annotator', :t)"),
                  {"h": labelling.store.hash_token("tok"), "t": time.time() - 7200})
    engine.dispose()
    store = labelling.LabelStore(db_url)
    assert store.authenticate("tok").id == "old"
    assert store.open_session("tok") is not None
    store.token_lifetime_s = 3600.0
    assert store.authenticate("tok") is None  # issued two hours ago
    store.close()
