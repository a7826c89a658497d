"""experiments/audit_reward.py on a reward model trained on the built-in task's sentiment labels:
what the audit finds, and its HTML page rendered in headless Chromium."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.labelling.conftest import ensure_debian_package
from tests.labelling.test_browser import CHROMIUM_ARGS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _script(name, *args):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / name), *args], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """The quick configuration: a reward stage of 150 steps on 1000 built-in comparisons (labels
    by simulated annotators judging pleasant minus unpleasant words), laid out as a pipeline
    run's reward stage, then the audit with its defaults."""
    root = tmp_path_factory.mktemp("audit")
    _script("train_reward.py", f"--config.run_dir={root / 'reward'}", "--config.steps=150",
            "--config.eval_every=75", "--config.data.builtin_pairs=1000")
    _script("audit_reward.py", f"--config.run_dir={root}")
    return root, json.loads((root / "audit" / "audit.json").read_text())


def test_sentiment_concept_is_significant_and_random_is_not(audited):
    _, result = audited
    by = {c["name"]: c for c in result["tcav"]}
    assert set(by) == {"sentiment", "profanity", "length", "random"}
    assert by["sentiment"]["significant"] and by["sentiment"]["sensitivity"] > 0
    assert not by["random"]["significant"]
    assert any("sentiment" in b for b in result["card"]["known_biases"])
    assert len(by["sentiment"]["scores"]) == result["tcav_settings"]["random_sets"] - 1 == 29


def test_model_card_and_explanations(audited):
    root, result = audited
    card = result["card"]
    assert card["data"][0]["records"] > 900
    data_file = Path(card["data"][0]["file"])
    assert card["data"][0]["sha256"] == hashlib.sha256(data_file.read_bytes()).hexdigest()
    summary = json.loads((root / "reward" / "eval_summary.json").read_text())
    assert card["held_out"]["accuracy"] == summary["eval/accuracy"] > 0.7
    assert set(card["per_annotator_accuracy"]) == {"annotator_0", "annotator_1", "annotator_2"}
    assert card["training_config_sha256"] == json.loads(
        (root / "reward" / "config.json").read_text())["hash"]
    assert len(result["examples"]) == 6
    for ex in result["examples"]:
        for side in ex["sides"]:
            assert len(side["tokens"]) == len(side["attributions"]) > 0
            assert side["completeness"] <= 0.01  # integrated gradients at 64 steps
    assert set(result["hacking"]) >= {"length", "perturbations", "rewarded_word"}
    assert (root / "audit" / "plots" / "atlas.png").stat().st_size > 10_000
    assert "## Concepts (TCAV)" in (root / "audit" / "audit.md").read_text()


def test_report_renders_in_chromium(audited, tmp_path):
    from playwright.sync_api import sync_playwright

    root, result = audited
    page_path = root / "audit" / "audit.html"
    chromium = ensure_debian_package("chromium", "/usr/bin/chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        fetched = []
        page.on("request", lambda r: fetched.append(r.url))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        # self-contained: nothing but the page itself and inline data is requested
        assert [u for u in fetched if not u.startswith("data:")] == [page_path.as_uri()]
        assert page.evaluate("document.getElementById('atlas').naturalWidth") > 300
        tokens = sum(len(s["tokens"]) for ex in result["examples"] for s in ex["sides"])
        assert page.locator("span.tok").count() == tokens
        assert page.locator("h2", has_text="Concepts (TCAV)").count() == 1
        assert "sentiment" in page.locator("#biases").inner_text()
        shot = tmp_path / "audit.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 50_000


def test_a_standalone_reward_dir_uses_no_run_metadata(audited, tmp_path):
    """A reward model outside the run directory: nothing of the run is attributed to it, and
    mistakes stop with the field named."""
    from rlhf_jax import studies, train

    root, result = audited
    prefs = result["card"]["data"][0]["file"]
    base = dict(run_dir=str(root), reward_dir=str(tmp_path / "rm"), preference_file=prefs,
                max_prompt_len=result["card"]["lengths"]["max_prompt_len"],
                max_response_len=result["card"]["lengths"]["max_response_len"],
                out_dir=str(tmp_path / "out"), samples=40, examples=1, random_sets=3,
                concept_examples=20, builtin_concepts=False)
    import shutil
    shutil.copytree(root / "reward" / "export", tmp_path / "rm")
    studies.audit_reward(studies.AuditConfig(**base))
    card = json.loads((tmp_path / "out" / "audit.json").read_text())["card"]
    assert card["training_steps"] is None and card["held_out"] == {}
    assert card["training_config_sha256"] is None
    with pytest.raises(train.ConfigError, match="random_sets=2: expected >= 3"):
        studies.AuditConfig(**dict(base, random_sets=2))
    with pytest.raises(train.ConfigError, match="layer=5: this model has hidden states 0..2"):
        studies.audit_reward(studies.AuditConfig(**dict(base, layer=5)))
    with pytest.raises(train.ConfigError, match="max_prompt_len and max_response_len"):
        studies.audit_reward(studies.AuditConfig(**dict(base, max_prompt_len=0)))
    with pytest.raises(train.ConfigError, match="'sentiment' is already a concept"):
        studies.audit_reward(studies.AuditConfig(**dict(
            base, builtin_concepts=True, concepts=f"sentiment={prefs}")))


@pytest.fixture(scope="module")
def own_audit(tmp_path_factory):
    """A reward model trained on a user's conversational preference file, on a tiny Llama made
    with transformers (its padding row initialised to zero, as Hugging Face does), audited
    with the defaults: built-in concepts that do not fit its lengths, conversations as
    prompts, and a pad embedding that is no baseline for integrated gradients."""
    from rlhf_jax import stages, studies
    from rlhf_jax.train import OptimizerConfig
    from tests.chat_tokenizers import conversation_files, make_chat_model

    root = tmp_path_factory.mktemp("own_audit")
    make_chat_model(root / "policy")
    files = conversation_files(root)
    stages.train_reward_model(stages.RewardConfig(
        run_dir=str(root / "reward"), model_dir=str(root / "policy"), steps=8, batch_size=8,
        eval_every=4, optim=OptimizerConfig(learning_rate=1e-3, warmup_steps=2),
        data=stages.RewardData(train_file=str(files["prefs"]), max_prompt_len=48,
                               max_response_len=14)))
    studies.audit_reward(studies.AuditConfig(run_dir=str(root), samples=64, examples=3,
                                             random_sets=10))
    return root, json.loads((root / "audit" / "audit.json").read_text())


def test_audit_of_a_users_conversational_reward_model(own_audit):
    from tests.eval.test_report_text import assert_tables_are_whole

    root, result = own_audit
    # the built-in concepts that do not fit the model's lengths are left out, with the reason
    assert "length" in result["tcav_left_out"] and "fit the model's lengths" in \
        result["tcav_left_out"]["length"]
    assert {c["name"] for c in result["tcav"]} | set(result["tcav_left_out"]) == \
        {"sentiment", "profanity", "length", "random"}
    md = (root / "audit" / "audit.md").read_text()
    assert "Left out: concept 'length'" in md and "--config.builtin_concepts=false" in md
    # integrated gradients from the mean embedding (the pad row is zero) within 1%
    for ex in result["examples"]:
        assert isinstance(ex["prompt"], list)
        for side in ex["sides"]:
            assert side["baseline"] == "mean embedding" and side["completeness"] <= 0.01
            assert side["complete"] and side["ig_steps"] >= 64
    assert "the pad token's embedding is zero" in md
    # every table whole, no control character, conversations shown by role
    assert_tables_are_whole(md)
    raw = (root / "audit" / "audit.html").read_bytes() + md.encode()
    assert all(c >= 32 or c in (9, 10) for c in raw)
    assert "<b>user:</b> tell me about" in (root / "audit" / "audit.html").read_text()
    lb = result["hacking"]["length"]
    assert "bootstrap" in lb["test"] and 0 <= lb["p_difference"] <= 1


def test_an_empty_concept_table_says_why(own_audit, tmp_path):
    from rlhf_jax import studies

    root, _ = own_audit
    studies.audit_reward(studies.AuditConfig(run_dir=str(root), out_dir=str(tmp_path),
                                             samples=40, examples=1, builtin_concepts=False))
    md = (tmp_path / "audit.md").read_text()
    section = md[md.index("## Concepts (TCAV)"):md.index("## Activation atlas")]
    assert "Empty: no concept to test: the built-in concepts are off and no concept file " \
           "was given." in section
