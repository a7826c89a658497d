"""`experiments/label_server.py` as a user runs it: tasks files and their errors, tasks sampled
from a policy, export into a reward-model dataset, and a served app under concurrent load and
SIGKILL."""
import json
import random
import re
import sqlite3
import threading
import time

import httpx
import jax
import pytest

from rlhf_jax import data, labelling
from rlhf_jax.models import DecoderModel, init_params, preset, save_hf_checkpoint
from tests.labelling.conftest import Server, run_script, simple_tasks, write_tasks


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "p", "responses": ["a"]}', "field 'responses' must be a list of 2 to 9"),
    ('{"prompt": "", "responses": ["a", "b"]}', "field 'prompt' must be a non-empty string"),
    ('{"prompt": "p", "responses": ["a", "a"]}', "holds the same text twice"),
    ('{"prompt": "p", "responses": ["a", "b"], "meta": 3}', "field 'meta' must be a JSON"),
    ('{"prompt": "p", "responses": ["a", "b"]', "not valid JSON"),
])
def test_bad_tasks_file_names_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"prompt": "ok", "responses": ["x", "y"]}\n' + line + "\n")
    with pytest.raises(data.DataFormatError) as e:
        labelling.read_tasks(path)
    assert f"{path}:2" in str(e.value) and message in str(e.value)


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p", "responses": ["a"]}\n')
    r = run_script("--config.tasks=bad.jsonl", cwd=tmp_path)
    assert r.returncode == 2 and "bad.jsonl:1: field 'responses'" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_script("--config.db=x.sqlite", cwd=tmp_path)
    assert r.returncode == 2 and "no tasks: give --config.tasks" in r.stderr
    r = run_script("--config.labels_per_task=0", cwd=tmp_path)
    assert r.returncode == 2 and "labels_per_task=0" in r.stderr
    (tmp_path / "notdb.sqlite").write_text("this is not a database" * 100)
    write_tasks(tmp_path / "t.jsonl", simple_tasks(2))
    r = run_script("--config.db=notdb.sqlite", "--config.tasks=t.jsonl", cwd=tmp_path)
    assert r.returncode == 2 and "notdb.sqlite" in r.stderr and "cannot be opened" in r.stderr
    assert (tmp_path / "notdb.sqlite").read_text().startswith("this is not")  # left alone


def test_tasks_sampled_from_a_policy(tmp_path):
    from tests.hf_reference import train_tiny_tokenizer

    config = preset("tiny-llama")
    tok = train_tiny_tokenizer(tmp_path / "tok")
    config = preset("tiny-llama", vocab_size=len(tok))
    policy = save_hf_checkpoint(tmp_path / "policy", config,
                                init_params(DecoderModel(config), jax.random.key(0)),
                                tokenizer=tok)
    (tmp_path / "prompts.jsonl").write_text("".join(
        json.dumps({"prompt": f"tell me about the {w}:"}) + "\n" for w in ("cat", "dog", "sun")))
    cfg = labelling.LabelServerConfig(policy_dir=str(policy), prompts=str(tmp_path /
                                                                          "prompts.jsonl"),
                                      num_prompts=3, num_responses=3, max_new_tokens=6)
    tasks = labelling.load_tasks(cfg)
    assert [t["prompt"] for t in tasks] == [f"tell me about the {w}:" for w in
                                            ("cat", "dog", "sun")]
    for t in tasks:
        assert len(t["responses"]) == 3 == len(set(t["responses"]))
        assert all(r.strip() for r in t["responses"])
        assert t["meta"]["policy_dir"] == str(policy)
    assert labelling.load_tasks(cfg) == tasks  # same seed, same tasks


def _page_fields(html):
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', html))


class Client(threading.Thread):
    """An annotator's browser: logs in, then fetches and answers tasks until none is left or
    the shared deadline passes. A label counts as acknowledged only when the server answered
    with the confirming redirect; connection errors (a killed server) are retried."""

    def __init__(self, shared, name, link, seed):
        super().__init__(daemon=True)
        self.shared, self.name, self.rng = shared, name, random.Random(seed)
        self.http = httpx.Client(timeout=30, follow_redirects=False)
        self.link, self.acked, self.errors = link, [], []

    def url(self, path):
        return self.shared["url"] + path

    def run(self):
        try:
            self._loop()
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(e))

    def _loop(self):
        logged_in = False
        while time.monotonic() < self.shared["deadline"]:
            try:
                if not logged_in:
                    token = self.link.split("token=")[1]
                    assert self.http.get(self.url("/login"), params={"token": token}
                                         ).status_code == 303
                    logged_in = True
                page = self.http.get(self.url("/label"))
                assert page.status_code == 200, page.status_code
                if "Nothing left" in page.text:
                    return
                f = _page_fields(page.text)
                choice = self.rng.choice("01")
                r = self.http.post(self.url("/label"), data={**f, "choice": choice})
                assert r.status_code == 303, (r.status_code, r.text[:300])
                lid = int(r.headers["location"].split("saved=")[1])
                self.acked.append((lid, int(f["assignment"]), int(choice)))
                with self.shared["lock"]:
                    self.shared["acked"] += 1
            except httpx.TransportError:
                time.sleep(0.05)  # the server is down: try again (it may come back)


def _check_acknowledged(db_path, clients):
    """Every acknowledged label is stored once, by its annotator, with the choice sent."""
    store = labelling.LabelStore(f"sqlite:///{db_path}", labels_per_task=5)
    labels = {lab.id: lab for lab in store.labels()}
    acked = [(c.name, *a) for c in clients for a in c.acked]
    assert len({lid for _, lid, _, _ in acked}) == len(acked)
    for name, lid, assignment, choice in acked:
        lab = labels[lid]
        assert lab.annotator_id == name
        assert lab.ranks[lab.shown_order[choice]] == 0  # the chosen shown position won
        assert lab.ranks[lab.shown_order[1 - choice]] == 1
    assert store.check_consistency() == []
    with sqlite3.connect(db_path) as c:
        assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert c.execute("select count(*) from labels").fetchone()[0] == len(
            {(lab.task.id, lab.annotator_id) for lab in labels.values()})
    store.close()
    return labels, acked


def _annotator_args(n):
    return [f"--config.annotators={','.join(f'ann{i}' for i in range(n))}",
            "--config.labels_per_task=5"]


@pytest.mark.slow
def test_twenty_clients_five_hundred_labels(tmp_path):
    write_tasks(tmp_path / "tasks.jsonl", simple_tasks(100))
    server = Server(tmp_path, "--config.db=l.sqlite", "--config.tasks=tasks.jsonl",
                    *_annotator_args(20))
    try:
        shared = {"url": server.url, "lock": threading.Lock(), "acked": 0,
                  "deadline": time.monotonic() + 240}
        clients = [Client(shared, f"ann{i}", server.links[f"ann{i}"], i) for i in range(20)]
        t0 = time.monotonic()
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        elapsed = time.monotonic() - t0
    finally:
        server.stop()
    assert [e for c in clients for e in c.errors] == []
    labels, acked = _check_acknowledged(tmp_path / "l.sqlite", clients)
    assert len(acked) == len(labels) == 500, (len(acked), len(labels), elapsed)


@pytest.mark.slow
def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path):
    write_tasks(tmp_path / "tasks.jsonl", simple_tasks(40))
    args = ["--config.db=l.sqlite", "--config.tasks=tasks.jsonl", *_annotator_args(20)]
    server = Server(tmp_path, *args)
    links = dict(server.links)
    shared = {"url": server.url, "lock": threading.Lock(), "acked": 0,
              "deadline": time.monotonic() + 240}
    clients = [Client(shared, f"ann{i}", links[f"ann{i}"], i) for i in range(20)]
    for c in clients:
        c.start()
    try:
        deadline = time.monotonic() + 120
        while shared["acked"] < 60:
            assert time.monotonic() < deadline, [c.errors for c in clients]
            time.sleep(0.01)
        server.kill()  # mid-load: requests are in flight
        labels, acked = _check_acknowledged(tmp_path / "l.sqlite", clients)
        assert len(acked) >= 60 and len(labels) >= len(acked)
        server = Server(tmp_path, *args)  # same database, new port; tokens still valid
        assert server.links == {}  # nobody new: no token reissued
        shared["url"] = server.url
        for c in clients:
            c.join()
    finally:
        server.stop()
    assert [e for c in clients for e in c.errors] == []
    labels, acked = _check_acknowledged(tmp_path / "l.sqlite", clients)
    # every slot is labelled once: the in-flight requests cut off by the kill were either
    # committed (and then shown as the same, already-labelled assignment) or rolled back
    assert len(labels) == 200 and len(acked) <= 200
    assert len(acked) >= 200 - 20  # at most one unacknowledged label per client


@pytest.mark.slow
def test_export_round_trip_into_a_reward_model_dataset(tmp_path):
    from tests.hf_reference import train_tiny_tokenizer

    write_tasks(tmp_path / "tasks.jsonl", simple_tasks(12) + [
        {"prompt": "rank these", "responses": ["first one", "second one", "third one"]}])
    store = labelling.LabelStore(f"sqlite:///{tmp_path / 'l.sqlite'}", labels_per_task=2)
    store.add_tasks(labelling.read_tasks(tmp_path / "tasks.jsonl"))
    rng = random.Random(0)
    names = ("x", "y", "z")
    for name in names:
        store.add_annotator(name)
    for turn in range(3 * 13):  # annotators take turns
        name = names[turn % 3]
        if (a := store.next_assignment(name)) is not None:
            n = len(a.task.responses)
            store.submit(a.id, name, rng.sample(range(n), n),
                         ratings=[rng.randint(1, 7) for _ in range(n)], rationale=f"{name}!")
    assert len(store.labels()) == 26 and store.progress("z")["done"] > 0
    store.close()
    r = run_script("--config.db=l.sqlite", "--config.export_to=out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "out" / "export.json").read_text())
    assert manifest["rating_range"] == [1, 7]
    tok = train_tiny_tokenizer(tmp_path / "tok")
    for kind in ("pairwise", "ranking", "rating"):
        ds = data.build_preference_dataset(
            tmp_path / "out" / f"{kind}.jsonl", kind, tok, tmp_path / "ds",
            max_prompt_len=8, max_response_len=32, rating_range=(1, 7))
        n = manifest["files"][kind]["records"]
        assert ds.stats["kept"] == n and ds.stats["skipped"] == 0
        assert ds.annotators == ["x", "y", "z"]
        assert sum(ds.stats["splits"].values()) == n
    assert manifest["files"]["pairwise"]["records"] == 24
    assert manifest["files"]["ranking"]["records"] == 26
    assert manifest["files"]["rating"]["records"] == 24 * 2 + 2 * 3
