"""The decision log: hash chain, tamper detection, torn lines, concurrent appends, hashes,
the logging scorer, the command line, and PPO's opt-in decision log."""
import hashlib
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from rlhf_jax.models import DecoderModel, init_params, preset
from rlhf_jax.interpret import (DecisionLog, DecisionLogError, LoggedScorer, input_hash,
                                model_hash, record_override, text_hash, verify_log)
from rlhf_jax.reward import reward_model_scorer
from rlhf_jax.interpret import decisions

ROOT = Path(__file__).resolve().parents[2]


def _filled_log(path, n=6) -> DecisionLog:
    """n − 1 decisions (one batch) and an override as the last line."""
    log = DecisionLog(path)
    log.append_decisions(model_hash="m" * 64, input_hashes=[f"{i:064x}" for i in range(n - 1)],
                         scores=[0.5 * i for i in range(n - 1)],
                         uncertainties=[0.1] * (n - 1), context="test")
    record_override(log, who="alice", target=f"{1:064x}", old=0.5, new=-1.0,
                    reason="the response is off-topic")
    return log


def _lines(path):
    return Path(path).read_text().splitlines(keepends=True)


def _first_problem_line(path, **kw) -> str:
    result = verify_log(path, **kw)
    assert not result.ok and result.problems
    return result.problems[0].split(":")[0]


def test_chain_verifies_and_hashes_match_hashlib(tmp_path):
    path = tmp_path / "log.jsonl"
    log = _filled_log(path)
    result = verify_log(path)
    assert result.ok and result.entries == 6 and result.problems == []
    rows = [json.loads(x) for x in _lines(path)]
    assert [r["seq"] for r in rows] == list(range(6))
    assert [r["kind"] for r in rows] == ["decision"] * 5 + ["override"]
    assert rows[0]["prev"] == "0" * 64
    for before, row in zip(rows, rows[1:]):
        assert row["prev"] == before["hash"]
    # an independent recomputation of one entry's hash
    body = {k: v for k, v in rows[3].items() if k != "hash"}
    expected = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert rows[3]["hash"] == expected
    assert rows[3]["score"] == 1.5 and rows[3]["uncertainty"] == 0.1
    assert rows[3]["time"].endswith("+00:00")
    assert rows[5]["who"] == "alice" and rows[5]["what"] == "score" and rows[5]["new"] == -1.0
    assert log.head() == (5, rows[5]["hash"])
    assert DecisionLog(tmp_path / "empty.jsonl").head() is None


def test_removed_edited_reordered_lines_are_found_at_their_line(tmp_path):
    path = tmp_path / "log.jsonl"
    _filled_log(path)
    good = _lines(path)

    def tampered(lines):
        path.write_text("".join(lines))
        return _first_problem_line(path)

    assert tampered(good[:2] + good[3:]) == "line 3"  # the third line deleted
    edited = json.loads(good[3])
    edited["score"] = 9.0
    assert tampered(good[:3] + [decisions.canonical_json(edited) + "\n"] + good[4:]) == "line 4"
    assert tampered([good[0], good[2], good[1]] + good[3:]) == "line 2"  # two lines swapped
    who = good[5].replace('"who":"alice"', '"who":"mallory"')
    assert who != good[5] and tampered(good[:5] + [who]) == "line 6"
    # an edit with its hash recomputed breaks the link of the next line
    edited["hash"] = decisions.entry_hash(edited)
    assert tampered(good[:3] + [decisions.canonical_json(edited) + "\n"] + good[4:]) == "line 5"
    # the same content laid out differently is an edit too
    assert tampered(good[:1] + [json.dumps(json.loads(good[1])) + "\n"] + good[2:]) == "line 2"
    path.write_text("".join(good))
    assert verify_log(path).ok


def test_a_deeply_nested_line_is_reported_not_raised(tmp_path):
    """A line json cannot parse without recursing too deep is a bad line like any other."""
    path = tmp_path / "log.jsonl"
    _filled_log(path)
    good = _lines(path)
    path.write_text("".join(good[:2]) + "[" * 100_000 + "]" * 100_000 + "\n" + "".join(good[2:]))
    assert _first_problem_line(path) == "line 3"
    with pytest.raises(DecisionLogError):  # nor does the last-line check raise anything else
        bad = tmp_path / "tail.jsonl"
        bad.write_text("".join(good) + "[" * 100_000 + "]" * 100_000 + "\n")
        DecisionLog(bad).head()


def test_a_given_model_hash_names_only_the_first_params(tmp_path):
    config = preset("tiny-gpt2")
    a = init_params(DecoderModel(config, heads=("reward",)), jax.random.key(0))
    b = init_params(DecoderModel(config, heads=("reward",)), jax.random.key(1))
    scorer = LoggedScorer(reward_model_scorer(config), tmp_path / "log.jsonl",
                          model_hash="f" * 64)
    pt, pm, rt, rm = _rows()
    scorer(a, pt, pm, rt, rm)
    scorer(b, pt, pm, rt, rm)
    rows = [json.loads(x) for x in _lines(tmp_path / "log.jsonl")]
    assert [r["model_hash"] for r in rows] == ["f" * 64] * 4 + [model_hash(b)] * 4


def test_tail_truncation_is_found_only_with_the_head(tmp_path):
    path = tmp_path / "log.jsonl"
    head = _filled_log(path).head()
    assert verify_log(path, expected_head=head).ok
    path.write_text("".join(_lines(path)[:-1]))  # the last line removed
    assert verify_log(path).ok  # what a hash chain alone cannot see
    result = verify_log(path, expected_head=head)
    assert not result.ok and "expected head seq 5 is missing" in result.problems[0]
    # a log rewritten from the start with fresh hashes has another head
    other = tmp_path / "other.jsonl"
    _filled_log(other)
    result = verify_log(other, expected_head=head)
    assert not result.ok and result.problems[0].startswith("line 6: seq 5 has hash")


def test_torn_last_line_refuses_appends_and_leaves_the_file(tmp_path):
    path = tmp_path / "log.jsonl"
    log = _filled_log(path)
    with open(path, "ab") as f:
        f.write(b'{"seq":6,"time":"2024-')  # a write cut short
    before = path.read_bytes()
    for attempt in (lambda: log.append_decision(model_hash="m", input_hash="i", score=1.0),
                    lambda: log.record_override(who="bob", target="t", old=1, new=2,
                                                reason="r"),
                    log.head):
        with pytest.raises(DecisionLogError, match=r"log\.jsonl: line 7, the last line.*verify"):
            attempt()
    assert path.read_bytes() == before
    assert _first_problem_line(path) == "line 7"
    # a complete but broken last line is refused too
    path.write_bytes(before.rsplit(b"\n", 1)[0] + b"\n{not json}\n")
    with pytest.raises(DecisionLogError, match="line 7, the last line, is not a valid entry"):
        log.append_decision(model_hash="m", input_hash="i", score=1.0)


@pytest.mark.parametrize("content", [b"", b"a\n", b"ab\ncd\n\nefg\n", b"ab\ncd", b"\n\n"])
def test_lines_read_from_the_end_across_chunks(tmp_path, content):
    path = tmp_path / "f"
    path.write_bytes(content)
    with open(path, "rb") as f:
        for chunk in (1, 2, 3, 1 << 16):
            assert list(decisions._reverse_lines(f, chunk)) == content.split(b"\n")[::-1]
    # the last entry is found however long the log is
    log = DecisionLog(tmp_path / "long.jsonl")
    for i in range(300):
        log.append_decision(model_hash="m", input_hash=f"{i}", score=i, context="x" * 300)
    assert log.head()[0] == 299
    assert log.find_last(lambda e: e["input_hash"] == "3")["seq"] == 3


def _append_many(path, worker, rounds):
    log = DecisionLog(path)
    for i in range(rounds):
        log.append_decisions(model_hash="m", input_hashes=[f"{worker}-{i}-a", f"{worker}-{i}-b"],
                             scores=[float(i), float(-i)], context=f"worker {worker}")


def test_two_processes_appending_keep_one_chain(tmp_path):
    path = tmp_path / "log.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), w, 40)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    result = verify_log(path)
    assert result.ok, result.problems[:3]
    assert result.entries == 160
    rows = [json.loads(x) for x in _lines(path)]
    assert len({r["input_hash"] for r in rows}) == 160
    # each batch of two is contiguous
    assert all(rows[i]["input_hash"][:-1] == rows[i + 1]["input_hash"][:-1]
               for i in range(0, 160, 2))


def test_input_hash_ignores_padding():
    real = hashlib.sha256(b"5,17,2").hexdigest()
    assert input_hash([5, 17, 2], [1, 1, 1]) == real
    assert input_hash([0, 0, 5, 17, 2], [0, 0, 1, 1, 1]) == real  # left padding
    assert input_hash(np.array([5, 17, 2, 9, 9]), np.array([1, 1, 1, 0, 0])) == real
    assert input_hash([5, 17, 3], [1, 1, 1]) != real
    assert text_hash("a", "bc") != text_hash("ab", "c")
    assert text_hash("hi", "there") == hashlib.sha256(b'["hi","there"]').hexdigest()


def test_model_hash_is_deterministic_and_sees_one_parameter():
    params = {"b": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
              "a": np.ones(3, np.float32)}
    h = model_hash(params)
    assert len(h) == 64
    assert model_hash(jax.tree.map(jax.numpy.asarray, params)) == h  # on the device
    changed = jax.tree.map(np.copy, params)
    changed["b"]["w"][1, 2] += 1e-3
    assert model_hash(changed) != h
    assert model_hash({**params, "a": params["a"].astype(np.float16)}) != h  # dtype
    assert model_hash({**params, "a": params["a"].reshape(1, 3)}) != h  # shape


def _rows(seed=0, b=4):
    rng = np.random.default_rng(seed)
    pt = rng.integers(3, 256, (b, 5)).astype(np.int32)
    pm = np.ones_like(pt)
    pm[0, :2] = 0  # a left-padded prompt
    rt = rng.integers(3, 256, (b, 4)).astype(np.int32)
    rm = np.ones_like(rt)
    rm[1, 2:] = 0  # a short response
    return pt, pm, rt, rm


@pytest.mark.parametrize("heads", [1, 3])
def test_logged_scorer_logs_each_row(tmp_path, heads, monkeypatch):
    config = preset("tiny-gpt2")
    params = init_params(DecoderModel(config, heads=("reward",), num_reward_outputs=heads),
                         jax.random.key(heads))
    score_fn = reward_model_scorer(config, heads, 0.5 if heads > 1 else 0.0)
    calls = []
    monkeypatch.setattr(decisions, "model_hash",
                        lambda p: calls.append(1) or model_hash(p))
    scorer = LoggedScorer(score_fn, tmp_path / "log.jsonl", context="deployment")
    pt, pm, rt, rm = _rows()
    scores = scorer(params, pt, pm, rt, rm)
    scorer(params, pt, pm, rt, rm, context="again")
    assert len(calls) == 1  # the model hash once per params object
    np.testing.assert_allclose(np.asarray(scores), np.asarray(score_fn(params, pt, pm, rt, rm)),
                               rtol=1e-6, atol=1e-6)
    rows = [json.loads(x) for x in _lines(tmp_path / "log.jsonl")]
    assert len(rows) == 8 and verify_log(tmp_path / "log.jsonl").ok
    assert [r["context"] for r in rows] == ["deployment"] * 4 + ["again"] * 4
    assert {r["model_hash"] for r in rows} == {model_hash(params)}
    np.testing.assert_allclose([r["score"] for r in rows[:4]], scores, rtol=1e-6)
    # row 0: a left-padded prompt, row 1: a response of two real tokens
    for row, real in ((0, list(pt[0, 2:]) + list(rt[0])), (1, list(pt[1]) + list(rt[1, :2]))):
        ids = ",".join(str(int(t)) for t in real)
        assert rows[row]["input_hash"] == hashlib.sha256(ids.encode()).hexdigest()
    if heads == 1:
        assert all(r["uncertainty"] is None for r in rows)
    else:
        tokens, mask = np.concatenate([pt, rt], 1), np.concatenate([pm, rm], 1)
        members = np.asarray(DecoderModel(config, heads=("reward",), num_reward_outputs=3).apply(
            {"params": params}, tokens, mask).reward)
        assert members.shape == (4, 3)
        np.testing.assert_allclose([r["uncertainty"] for r in rows[:4]], members.std(-1),
                                   rtol=1e-5, atol=1e-6)


def test_cli_verify_head_and_override(tmp_path, capsys):
    path = tmp_path / "log.jsonl"
    _filled_log(path)
    cli = [sys.executable, "-m", "rlhf_jax.interpret.decisions"]
    out = subprocess.run(cli + ["override", str(path), "--who", "carol", "--target", "label-7",
                                "--old", "chosen", "--new", "rejected", "--what", "label",
                                "--reason", "annotator swapped the pair"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "seq 6" in out.stdout, out.stderr
    assert "RuntimeWarning" not in out.stderr
    last = json.loads(_lines(path)[-1])
    assert (last["who"], last["what"], last["old"], last["new"]) == \
        ("carol", "label", "chosen", "rejected")
    good = subprocess.run(cli + ["verify", str(path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert good.returncode == 0 and "ok, 7 entries" in good.stdout
    assert decisions.main(["head", str(path)]) == 0
    head = capsys.readouterr().out.strip()
    assert head == f"6:{last['hash']}"
    path.write_text("".join(_lines(path)[:-1]).replace('"score":1.0', '"score":2.0'))
    bad = subprocess.run(cli + ["verify", str(path), "--head", head], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 1
    assert "line 3: hash does not match" in bad.stdout and "head seq 6 is missing" in bad.stdout
    assert decisions.main(["override", str(path), "--who", " ", "--target", "t", "--old", "1",
                           "--new", "2", "--reason", "r"]) == 1
    assert "who=' '" in capsys.readouterr().err


@pytest.mark.slow
def test_ppo_logs_every_iterations_decisions_once(tmp_path):
    """A tiny PPO run with decision_log: one entry per response and iteration, a valid chain,
    the reward model's scores (their mean is the step's score/reward_model), and a run resumed
    from an earlier checkpoint does not log the iterations it repeats."""
    import shutil

    from rlhf_jax import data, reward, stages, train

    tok = data.builtin.train_tokenizer(tmp_path / "tok")
    config = preset("tiny-llama", vocab_size=len(tok))
    rm = init_params(DecoderModel(config, heads=("reward",)), jax.random.key(0))
    reward.save_reward_model(tmp_path / "rm", config, rm, tokenizer=tok)
    log = tmp_path / "governance" / "decisions.jsonl"
    cfg = train.config_from_dict(stages.PPOStageConfig, {
        "run_dir": str(tmp_path / "ppo"), "reward_dir": str(tmp_path / "rm"), "batch_size": 8,
        "steps": 2, "log_every": 1, "eval_prompts": 8, "sampling": {"max_new_tokens": 4},
        "checkpoint": {"save_every": 1, "keep_last": 3}, "mesh": "data=2,fsdp=4",
        "ppo": {"epochs": 1}, "decision_log": str(log)})
    stages.train_ppo(cfg)
    result = verify_log(log)
    assert result.ok and result.entries == 2 * 8
    rows = [json.loads(x) for x in _lines(log)]
    run_dir = (tmp_path / "ppo").resolve()
    assert [r["context"] for r in rows] == [f"ppo/iteration {n} run_dir={run_dir}"
                                            for n in (1, 2) for _ in range(8)]
    assert {r["model_hash"] for r in rows} == {model_hash(rm)}
    metrics = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").open()]
    for n, m in enumerate(metrics, 1):
        logged = [r["score"] for r in rows if r["context"].startswith(f"ppo/iteration {n} ")]
        assert m["score/reward_model"] == pytest.approx(np.mean(logged), abs=1e-5)
    # lose the last checkpoint, as a crash after iteration 2's log and before its save would
    shutil.rmtree(tmp_path / "ppo" / "checkpoints" / "2")
    stages.train_ppo(train.config_from_dict(stages.PPOStageConfig, {
        **train.config_to_dict(cfg), "steps": 3}))
    result = verify_log(log)
    assert result.ok and result.entries == 3 * 8
    contexts = [json.loads(x)["context"].split(" run_dir")[0] for x in _lines(log)]
    assert contexts == [f"ppo/iteration {n}" for n in (1, 2, 3) for _ in range(8)]
