"""The labelling database's rules, run on SQLite and on a real PostgreSQL server."""
import random
import threading
from collections import Counter

import pytest

from rlhf_jax.labelling import Forbidden, LabelError, LabelStore, NotFound, TaskFull
from tests.labelling.conftest import simple_tasks


@pytest.fixture
def store(db_url):
    s = LabelStore(db_url, labels_per_task=2, lease_s=60)
    for n in ("a", "b", "c", "d"):
        s.add_annotator(n)
    s.add_tasks(simple_tasks(3) + [{"prompt": "k", "responses": ["x", "y", "z"], "id": "k3"}])
    yield s
    s.close()


def test_tasks_reach_distinct_annotators_up_to_the_quota(store):
    assert store.add_tasks(simple_tasks(3)) == 0  # same tasks again: nothing new
    assert store.num_tasks() == 4
    got = {}
    for n in "abcd":
        while (a := store.next_assignment(n, random.Random(1))) is not None:
            assert store.next_assignment(n).id == a.id  # a reload shows the same assignment
            store.submit(a.id, n, [0, 1] if len(a.task.responses) == 2 else [2, 0, 1])
            got.setdefault(a.task.id, []).append(n)
    assert all(len(v) == 2 and len(set(v)) == 2 for v in got.values())
    assert len(got) == 4 and len(store.labels()) == 8
    assert store.check_consistency() == []
    assert store.progress("a")["available"] == 0


def test_shown_order_is_random_and_stored(store):
    s2 = LabelStore(store.url, labels_per_task=50)
    orders = Counter()
    for i in range(40):
        s2.add_annotator(f"r{i}")
        a = s2.next_assignment(f"r{i}", random.Random(i))
        assert sorted(a.shown_order) == list(range(len(a.task.responses)))
        assert s2.assignment(a.id, f"r{i}").shown_order == a.shown_order
        orders[tuple(a.shown_order)] += 1
    # 40 annotators share the first task (tasks fill up one at a time); both orders are shown
    # (one order only would happen with probability 2^-39)
    assert sorted(orders) == [(0, 1), (1, 0)]
    s2.close()


def test_skip_and_lease_release_slots(store):
    a = store.next_assignment("a", now=1000.0)
    b = store.next_assignment("b", now=1000.0)
    assert a.task.id == b.task.id  # the task with the most labels in progress fills first
    c = store.next_assignment("c", now=1000.0)
    assert c.task.id != a.task.id  # both slots of a's task are held
    store.skip(b.id, "b")
    d = store.next_assignment("d", now=1001.0)
    assert d.task.id == a.task.id  # b's skip gave the slot back
    with pytest.raises(LabelError, match="skipped"):
        store.submit(b.id, "b", [0, 1])
    # a's lease runs out: its slot goes to e, and a's late answer finds the task full
    store.add_annotator("e")
    e = store.next_assignment("e", now=1000.0 + 61)
    assert e.task.id == a.task.id
    store.submit(d.id, "d", [0, 1])
    store.submit(e.id, "e", [1, 0])
    with pytest.raises(TaskFull):
        store.submit(a.id, "a", [0, 1])
    # c's assignment expired at e's claim, but its task still has a free slot: a late answer
    # takes it again
    assert store.assignment(c.id, "c").status == "expired"
    lid, new = store.submit(c.id, "c", [0, 1], now=1100.0)
    assert new and store.label(lid, "c").submitted_at == 1100.0
    assert store.check_consistency() == []


def test_ownership_idempotence_and_validation(store):
    a = store.next_assignment("a")
    with pytest.raises(Forbidden):
        store.submit(a.id, "b", [0, 1])
    with pytest.raises(Forbidden):
        store.skip(a.id, "b")
    with pytest.raises(NotFound):
        store.submit(12345, "a", [0, 1])
    with pytest.raises(LabelError, match="expected 2 ints"):
        store.submit(a.id, "a", [0, 5])
    with pytest.raises(LabelError, match="ratings"):
        store.submit(a.id, "a", [0, 1], ratings=[1])
    lid, new = store.submit(a.id, "a", [1, 0], ratings=[3, None], rationale="why")
    assert new
    assert store.submit(a.id, "a", [0, 1]) == (lid, False)  # resent: the first label stays
    lab = store.label(lid, "a")
    assert lab.ranks == [1, 0] and lab.ratings == [3, None] and lab.rationale == "why"
    assert lab.submitted_at >= lab.shown_at
    with pytest.raises(Forbidden):
        store.label(lid, "b")
    with pytest.raises(Forbidden):
        store.update_label(lid, "b", [0, 1])
    store.update_label(lid, "a", [0, 1], rationale="second thoughts")
    assert store.label(lid, None).ranks == [0, 1]
    assert store.label(lid, None).rationale == "second thoughts"
    with pytest.raises(ValueError, match="annotator id"):
        store.add_annotator("bad name!")
    with pytest.raises(ValueError, match="role"):
        store.add_annotator("x", role="root")


def test_tokens_authenticate_and_reissue(store):
    t = store.add_annotator("g")
    assert store.authenticate(t).id == "g" and store.authenticate(t + "x") is None
    assert store.authenticate("") is None and store.authenticate(None) is None
    t2 = store.reissue_token("g")
    assert store.authenticate(t) is None and store.authenticate(t2).id == "g"
    with pytest.raises(NotFound):
        store.reissue_token("nobody")


def test_concurrent_claims_keep_the_rules(store):
    """Threads claiming and labelling at once: no task gets more than its quota and nobody
    labels a task twice (the unique constraints hold under races, with retries)."""
    names = [f"w{i}" for i in range(8)]
    for n in names:
        store.add_annotator(n)
    store.add_tasks(simple_tasks(20, k=2)[3:])
    errors = []

    def work(n):
        try:
            while (a := store.next_assignment(n)) is not None:
                store.submit(a.id, n, list(range(len(a.task.responses))))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))
    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    per_task = Counter(lab.task.id for lab in store.labels())
    assert max(per_task.values()) == 2 and len(per_task) == 21  # 4 + 17 new tasks
    assert len({(lab.task.id, lab.annotator_id) for lab in store.labels()}) == len(
        store.labels())
    assert store.check_consistency() == []


def test_a_submit_racing_a_lease_expiry_keeps_the_quota(store):
    """A lease expiry commits while a submit of the same assignment waits: the submit must see
    the expiry and take a slot again, not store a label that holds no slot (which would let
    another annotator over the quota)."""
    import sqlalchemy as sa
    from rlhf_jax.labelling.database import assignments

    a = store.next_assignment("a", now=1000.0)
    conn = store.engine.connect()
    conn.execution_options(write=True)
    tx = conn.begin()
    conn.execute(assignments.update().where(assignments.c.id == a.id)
                 .values(status="expired", slot=None))  # what another claim's expiry writes
    result = []
    t = threading.Thread(target=lambda: result.append(store.submit(a.id, "a", [0, 1])))
    t.start()
    t.join(0.5)
    assert t.is_alive()  # the submit waits for the row (or, on SQLite, the write lock)
    tx.commit()
    conn.close()
    t.join(30)
    assert result and result[0][1]
    assert store.assignment(a.id, "a").status == "done"
    assert store.check_consistency() == []
    with store.engine.connect() as c:
        slot = c.execute(sa.select(assignments.c.slot).where(assignments.c.id == a.id)).scalar()
    assert slot is not None


def test_one_open_assignment_per_annotator(store):
    import sqlalchemy as sa
    from rlhf_jax.labelling.database import assignments

    a = store.next_assignment("a")
    with pytest.raises(sa.exc.IntegrityError):
        with store.engine.begin() as c:
            c.execute(assignments.insert().values(
                task_id=a.task.id + 1, annotator_id="a", slot=1, shown_order="[0, 1]",
                status="open", shown_at=0.0))
