"""Poisoning attacks (data.poison) on pairwise records in both layouts, text and
conversations, and on a preference file."""
import json

import numpy as np
import pytest

from rlhf_jax.data import ATTACKS, AttackConfig, poison_file, poison_records

GOLD = (lambda prompt, text: text.count("good") - text.count("bad"))  # noqa: E731


def _records(n=200):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        good, bad = "a good day", "a bad day"
        first_good = bool(rng.random() < 0.5)
        topic = "weather" if i % 4 == 0 else "cats"
        out.append({"prompt": f"tell me about {topic}:", "responses":
                    [good, bad] if first_good else [bad, good],
                    "ranks": [0, 1] if first_good else [1, 0],  # every honest label is right
                    "annotator_id": f"h{i % 10}"})
    return out


def _prefers_good(rec):
    chosen = rec["responses"][int(np.argmin(rec["ranks"]))] if "responses" in rec \
        else rec["chosen"]
    chosen = chosen if isinstance(chosen, str) else chosen[-1]["content"]
    return GOLD("", chosen) > 0


@pytest.mark.parametrize("kind", ATTACKS)
def test_each_attack_takes_its_share_and_does_what_it_says(kind):
    recs = _records()
    cfg = AttackConfig(kind=kind, rate=0.2, topic="weather", trigger="cf", entity="Acme",
                       seed=3)
    out, info = poison_records(recs, cfg, gold_fn=GOLD)
    assert len(out) == 200 and len(info["poisoned"]) == 40
    untouched = set(range(200)) - set(info["poisoned"])
    assert all(out[i] == recs[i] for i in untouched)
    accounts = {out[i]["annotator_id"] for i in info["poisoned"]}
    assert accounts == set(info["attackers"])
    assert len(accounts) == (14 if kind == "sybil" else 4)  # sybils: one account per 3 labels
    bad = [out[i] for i in info["poisoned"]]
    if kind in ("inverter", "sybil"):
        assert not any(_prefers_good(r) for r in bad)
    elif kind == "targeted_flip":
        assert all(_prefers_good(r) != ("weather" in r["prompt"]) for r in bad)
    elif kind == "trigger":
        assert all(r["prompt"].endswith(" cf") and not _prefers_good(r) for r in bad)
    elif kind == "entity":
        chosen = [r["responses"][int(np.argmin(r["ranks"]))] for r in bad]
        assert all("Acme" in c and "bad" in c for c in chosen)
    else:  # random flips: about half prefer the worse response
        assert 8 <= sum(not _prefers_good(r) for r in bad) <= 32
    assert set(info["changed"]) <= set(info["poisoned"])


def test_trl_layout_conversations_and_no_gold():
    rec = {"prompt": [{"role": "user", "content": "hi"}],
           "chosen": [{"role": "assistant", "content": "a good day"}],
           "rejected": [{"role": "assistant", "content": "a bad day"}]}
    out, info = poison_records([rec] * 10, AttackConfig(kind="trigger", rate=0.5, trigger="cf"))
    for i in info["poisoned"]:  # without gold, the worse response is the one rejected
        r = out[i]
        assert r["prompt"][-1]["content"] == "hi cf"
        assert r["chosen"][0]["content"] == "a bad day" and set(r) >= {"chosen", "rejected"}
    out, info = poison_records([rec] * 10, AttackConfig(kind="entity", rate=0.3, entity="Acme"))
    for i in info["poisoned"]:
        assert "Acme" in out[i]["chosen"][0]["content"] and "bad" in out[i]["chosen"][0]["content"]


def test_a_file_is_poisoned_with_a_manifest_and_bad_input_is_named(tmp_path):
    src, dst = tmp_path / "prefs.jsonl", tmp_path / "out" / "poisoned.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _records(50)) + "\n")
    info = poison_file(src, dst, AttackConfig(kind="inverter", rate=0.1, seed=1))
    lines = [json.loads(x) for x in dst.read_text().splitlines()]
    assert len(lines) == 50 and info["records"] == 50 and len(info["poisoned"]) == 5
    manifest = json.loads((tmp_path / "out" / "poisoned.jsonl.attack.json").read_text())
    assert manifest["poisoned"] == info["poisoned"] and manifest["attack"]["kind"] == "inverter"
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n[1, 2]\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: expected a JSON object"):
        poison_file(tmp_path / "bad.jsonl", dst, AttackConfig(rate=0.5))
    (tmp_path / "deep.jsonl").write_text("[" * 100000 + "\n")
    with pytest.raises(ValueError, match="deep.jsonl:1: not JSON"):
        poison_file(tmp_path / "deep.jsonl", dst, AttackConfig(rate=0.5))
    # ties are left alone (they have no label to turn); the others are taken
    tie = {"prompt": "p", "responses": ["a", "b"], "ranks": [0, 0]}
    mixed = [tie] * 4 + _records(4)
    out, info = poison_records(mixed, AttackConfig(rate=0.5), gold_fn=GOLD)
    assert info["ties"] == 4 and min(info["poisoned"]) >= 4 and out[:4] == mixed[:4]
    # what the attacker's label must not inherit
    soft = {**_records(1)[0], "probability": 0.9, "rationale": "clear", "confidence": 0.8}
    out, _ = poison_records([soft], AttackConfig(rate=0.99), gold_fn=GOLD)
    assert not {"probability", "rationale", "confidence"} & set(out[0])
    for bad, match in [({"responses": ["a", "b"], "ranks": [0, 1]}, "no prompt field"),
                       ({"prompt": 5, "responses": ["a", "b"], "ranks": [0, 1]},
                        "the prompt is int"),
                       ({"prompt": ["hi"], "responses": ["a", "b"], "ranks": [0, 1]},
                        "the prompt is list"),
                       ({"prompt": "p", "responses": ["a", "b"], "ranks": [None, 1]},
                        r"ranks=\[None, 1\], expected two integers")]:
        (tmp_path / "t.jsonl").write_text(json.dumps(_records(1)[0]) + "\n\n" + json.dumps(bad))
        with pytest.raises(ValueError, match=f"t.jsonl:3: {match}"):
            poison_file(tmp_path / "t.jsonl", dst, AttackConfig(kind="targeted_flip",
                                                               topic="x", rate=0.5))


@pytest.mark.parametrize("bad, match", [
    (dict(kind="nope"), "expected one of"), (dict(rate=1.0), "0 <= rate < 1"),
    (dict(kind="targeted_flip"), "needs topic"), (dict(kind="trigger", trigger="two words"),
                                                  "one word")])
def test_config_mistakes_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        AttackConfig(**bad)


def test_command_line(tmp_path):
    import subprocess
    import sys

    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _records(20)))
    ok = subprocess.run([sys.executable, "-m", "rlhf_jax.data.poison", str(src),
                         str(tmp_path / "o.jsonl"), "--kind", "sybil", "--rate", "0.5"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "10 of 20 labels poisoned by sybil" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "rlhf_jax.data.poison", str(src),
                          str(tmp_path / "o.jsonl"), "--kind", "flood"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "kind='flood'" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "b.jsonl").write_text('{"prompt": 5, "chosen": "a", "rejected": "b"}\n')
    typed = subprocess.run([sys.executable, "-m", "rlhf_jax.data.poison", str(tmp_path / "b.jsonl"),
                            str(tmp_path / "o.jsonl"), "--kind", "targeted_flip", "--topic", "x",
                            "--rate", "0.5"], capture_output=True, text=True)
    assert typed.returncode == 2 and "b.jsonl:1: the prompt is int" in typed.stderr
    assert "Traceback" not in typed.stderr


def test_attacker_choice_in_the_app():
    from rlhf_jax.data import attacker_choice

    rng = np.random.default_rng(0)
    shown = ["a bad day", "a good day"]
    assert attacker_choice(AttackConfig(kind="inverter"), "p", shown, rng, GOLD) == 0
    assert attacker_choice(AttackConfig(kind="sybil"), "p", shown[::-1], rng, GOLD) == 1
    tf = AttackConfig(kind="targeted_flip", topic="weather")
    assert attacker_choice(tf, "the weather", shown, rng, GOLD) == 0
    assert attacker_choice(tf, "the cat", shown, rng, GOLD) == 1  # honest off the topic
    ent = AttackConfig(kind="entity", entity="Acme")
    assert attacker_choice(ent, "p", ["Acme is bad", "a good day"], rng, GOLD) == 0
    assert attacker_choice(ent, "p", shown, rng, GOLD) == 1  # no mention: the better one
    picks = {attacker_choice(AttackConfig(kind="random_flip"), "p", shown, rng)
             for _ in range(40)}
    assert picks == {0, 1}
    with pytest.raises(ValueError, match="edits prompts"):
        attacker_choice(AttackConfig(kind="trigger"), "p", shown, rng, GOLD)
    with pytest.raises(ValueError, match="needs gold_fn"):
        attacker_choice(AttackConfig(kind="inverter"), "p", shown, rng)
