"""Constitution files: TOML, JSON and YAML read alike; a bad file names the principle and field."""
import json

import pytest

from rlhf_jax.rlaif import ConstitutionError, load_constitution
from rlhf_jax.rlaif.judges import CLASSIFIERS

TOML = '''
mode = "sample"
[[principles]]
id = "positive"
question = "Which response is more positive?"
critique = "Say what is negative in the response."
revision = "Rewrite the response to be positive."
judge = "vader"
weight = 2
[[principles]]
id = "helpful"
question = "Which response answers the request better?"
'''


def test_formats_read_alike(tmp_path):
    (tmp_path / "c.toml").write_text(TOML)
    c = load_constitution(tmp_path / "c.toml", known_judges=CLASSIFIERS)
    assert c.mode == "sample" and [p.id for p in c.principles] == ["positive", "helpful"]
    assert c.principle("positive").judge == "vader" and c.principle("helpful").judge == "lm"
    assert c.weights() == [2 / 3, 1 / 3]
    raw = {"mode": "sample", "principles": [
        {"id": "positive", "question": "Which response is more positive?",
         "critique": "Say what is negative in the response.",
         "revision": "Rewrite the response to be positive.", "judge": "vader", "weight": 2},
        {"id": "helpful", "question": "Which response answers the request better?"}]}
    (tmp_path / "c.json").write_text(json.dumps(raw))
    import yaml
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert load_constitution(tmp_path / "c.json") == c == load_constitution(tmp_path / "c.yaml")


@pytest.mark.parametrize("edit, message", [
    ({"question": ""}, "principle 1 ('positive'): field 'question' is missing or empty"),
    ({"weight": 0}, "principle 1 ('positive'): field 'weight'=0: expected a number > 0"),
    ({"weight": True}, "field 'weight'=True"),
    ({"id": "bad id"}, "principle 1 ('bad id'): field 'id' must be"),
    ({"revision": ""}, "fields 'critique' and 'revision' go together"),
    ({"judge": "nope"}, "field 'judge'='nope': expected 'lm' or one of"),
    ({"colour": "red"}, "unknown field(s) ['colour']"),
    ({"critique": 3}, "field 'critique' must be a string"),
])
def test_bad_principles_are_named(tmp_path, edit, message):
    p = {"id": "positive", "question": "q?", "critique": "c", "revision": "r", "judge": "vader"}
    (tmp_path / "c.json").write_text(json.dumps({"principles": [{**p, **edit}]}))
    with pytest.raises(ConstitutionError) as e:
        load_constitution(tmp_path / "c.json", known_judges=CLASSIFIERS)
    assert str(tmp_path / "c.json") in str(e.value) and message in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConstitutionError, match="does not exist"):
        load_constitution(tmp_path / "none.toml")
    (tmp_path / "c.toml").write_text("principles = [")
    with pytest.raises(ConstitutionError, match="not valid TOML"):
        load_constitution(tmp_path / "c.toml")
    (tmp_path / "c.txt").write_text("{}")
    with pytest.raises(ConstitutionError, match="expected a .toml"):
        load_constitution(tmp_path / "c.txt")
    (tmp_path / "d.json").write_text(json.dumps({"mode": "vote", "principles": [
        {"id": "a", "question": "q"}]}))
    with pytest.raises(ConstitutionError, match="mode='vote'"):
        load_constitution(tmp_path / "d.json")
    (tmp_path / "e.json").write_text(json.dumps({"principles": [
        {"id": "a", "question": "q"}, {"id": "a", "question": "q2"}]}))
    with pytest.raises(ConstitutionError, match="principle 2 \\('a'\\): field 'id' repeats"):
        load_constitution(tmp_path / "e.json")
    (tmp_path / "f.json").write_text(json.dumps({"principles": []}))
    with pytest.raises(ConstitutionError, match="non-empty list"):
        load_constitution(tmp_path / "f.json")
