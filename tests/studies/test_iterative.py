"""Iterative DPO (`studies.iterative_dpo`) on a user's model and files: a tiny Llama made with
transformers, given a chat template, answering conversational prompts written as TRL's users
write them. Its pieces against brute force; rounds that resume exactly; rounds that wait for the
labelling app and go on with people's labels; settings that cannot work refused by name."""
import itertools
import json
import types

import jax
import numpy as np
import pytest

from rlhf_jax import data, models, train
from rlhf_jax.labelling import LabelStore
from rlhf_jax.stages.configs.pipeline import _replace
from rlhf_jax.stages.layout import IterativeLayout
from rlhf_jax.studies.iterative import (IterativeDPOConfig, judge_labels, app_tag,
                                        best_vs_worst, candidate_pairs, iterative_dpo)
from rlhf_jax.studies.label_sources import app_labels
from tests.chat_tokenizers import conversation_files, make_chat_model


def test_best_vs_worst_matches_brute_force():
    """Best and worst by score, an answer cut at the length limit below every answer that
    ended (online DPO's rule): brute force ranks by the score plus a bonus larger than any
    score gap for answers that ended."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(2, 6))
        scores = rng.integers(0, 3, size=k).astype(float).tolist()  # ties are common
        texts = [str(t) for t in rng.integers(0, 4, size=k)]
        texts[int(rng.integers(k))] = "" if rng.random() < 0.3 else texts[0]
        ended = (rng.random(k) < 0.6).tolist()
        (got,) = best_vs_worst([scores], [texts], [ended])
        ok = [i for i in range(k) if texts[i]]
        if len(ok) < 2:
            assert got is None
            continue
        rank = [scores[i] + 10.0 * ended[i] for i in range(k)]
        top, low = max(rank[i] for i in ok), min(rank[i] for i in ok)
        best = min(i for i in ok if rank[i] == top)
        worst = min(i for i in ok if rank[i] == low)
        expect = None if top == low or texts[best] == texts[worst] else (best, worst)
        assert got == expect, (scores, texts, ended)
    # without `ended` every answer counts as ended
    assert best_vs_worst([[0.0, 2.0, 1.0]], [["a", "b", "c"]]) == [(1, 0)]
    assert best_vs_worst([[0.0, 2.0, 1.0]], [["a", "b", "c"]], [[True, False, True]]) == [(2, 1)]


def test_candidate_pairs_are_every_distinct_nonempty_pair():
    texts = [["a", "b", "a", ""], ["x", "x"], ["p", "q", "r"]]
    got = candidate_pairs(texts)
    expect = []
    for p, t in enumerate(texts):
        firsts = sorted({a: t.index(a) for a in t if a}.values())
        expect += [(p, i, j) for i, j in itertools.combinations(firsts, 2)]
    assert got == expect == [(0, 0, 1), (2, 0, 1), (2, 0, 2), (2, 1, 2)]


@pytest.mark.parametrize("fields, message", [
    (dict(labels="simulated", judge="reward_model"), "annotators follow a text scorer"),
    (dict(labels="simulated", judge="constitution"), "annotators follow a text scorer"),
    (dict(judge="vader", constitution="c.toml"), "constitution / judge_model_dir are the"),
    (dict(labels="judge", acquisition="bald"), "acquisition chooses which pairs go to people"),
    (dict(labels="app"), "labels=app needs app_db"),
    (dict(samples_per_prompt=1), "samples_per_prompt=1"),
    ({"offline.loss.method": "kto"}, "pairwise loss"),
    (dict(judge="nope"), "judge='nope'"),
    (dict(reference="last"), "reference='last'"),
    ({"offline.steps": 4}, "offline.optim.warmup_steps=5 exceeds offline.steps=4"),
])
def test_settings_that_cannot_work_are_refused_by_name(fields, message):
    with pytest.raises(ValueError, match=message):
        _replace(IterativeDPOConfig(), fields)


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    make_chat_model(root / "policy")
    return {"policy": str(root / "policy"), "prompts": str(conversation_files(root)["prompts"])}


def _cfg(chat, run_dir, **kw):
    base = dict(run_dir=str(run_dir), policy_dir=chat["policy"], prompts_file=chat["prompts"],
                max_prompt_len=48, max_new_tokens=8, max_response_len=16, prompts_per_round=8,
                samples_per_prompt=3, labels="judge", judge="words", reward_dir="",
                **{"offline.steps": 3, "offline.batch_size": 8, "offline.log_every": 1,
                   "offline.optim.warmup_steps": 1})
    return _replace(IterativeDPOConfig(), {**base, **kw})


@pytest.mark.slow
def test_rounds_on_a_chat_model_resume_exactly(chat, tmp_path):
    """Two rounds judged by the packaged constitution's AI judge, run at once or one round and
    then the next: the same samples, labels, summaries and final weights. The judge compares
    every pair of a prompt's 3 answers and an answer scores its expected wins, so a prompt's
    scores sum to its 3 comparisons; the pair is its best answer against its worst. Round 1
    starts from round 0's policy, keeps the initial policy as its reference and trains on both
    rounds' labels."""
    kw = dict(judge="constitution")
    whole = iterative_dpo(_cfg(chat, tmp_path / "a", rounds=2, **kw), verbose=False)
    part = iterative_dpo(_cfg(chat, tmp_path / "b", rounds=1, **kw), verbose=False)
    assert len(part.history) == 1 and not part.waiting
    rest = iterative_dpo(_cfg(chat, tmp_path / "b", rounds=2, **kw), verbose=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds" and not  # noqa: E731
                           k.endswith("_dir") and k != "policy_start"} for r in rows]
    assert strip(rest.history) == strip(whole.history)
    a, b = IterativeLayout(tmp_path / "a"), IterativeLayout(tmp_path / "b")
    for r in (0, 1):
        assert a.round(r).labels.read_text() == b.round(r).labels.read_text()
        assert a.round(r).samples.read_text() == b.round(r).samples.read_text()
    _, wa = models.load_hf_checkpoint(whole.policy_dir)
    _, wb = models.load_hf_checkpoint(rest.policy_dir)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(wa), jax.tree.leaves(wb)))
    row0, row1 = whole.history
    # 3 answers to each of 8 prompts; the judge compares each prompt's 3 pairs
    assert row0["samples"] == 8 * 3 and row0["judge_calls"] == 8 * 3 * 2 // 2
    assert row0["human_labels"] == 0
    assert row1["labels_so_far"] == row0["pairs"] + row1["pairs"] > row0["pairs"]
    # round 1: from round 0's export, against the initial policy, on every label so far
    off1 = json.loads((a.round(1).stage("offline").config).read_text())["config"]
    assert off1["policy_dir"] == str(a.round(0).stage("offline").export)
    assert off1["reference_dir"] == chat["policy"]
    assert len(a.round(1).train_file.read_text().splitlines()) == row1["labels_so_far"]
    # the labels keep the conversations: message-list prompts, assistant turns as answers
    labels = [json.loads(x) for x in a.round(0).labels.read_text().splitlines()]
    assert all(isinstance(r["prompt"], list) and r["prompt"][-1]["role"] == "user"
               for r in labels)
    assert all(r["chosen"][0]["role"] == "assistant" and r["chosen"] != r["rejected"]
               for r in labels)
    # best against worst by the judge's expected wins
    samples = [json.loads(x) for x in a.round(0).samples.read_text().splitlines()]
    picks = best_vs_worst([s["scores"] for s in samples], [s["responses"] for s in samples],
                          [s["ended"] for s in samples])
    pairs = [(s["prompt"], s["responses"][b], s["responses"][w])
             for s, pick in zip(samples, picks) if pick for b, w in [pick]]
    assert [(r["prompt"], r["chosen"][0]["content"], r["rejected"][0]["content"])
            for r in labels] == pairs
    for s in samples:
        assert sum(s["scores"]) == pytest.approx(3.0, abs=1e-5)
    assert row0["pairs"] + row0["prompts_without_pair"] == 8


@pytest.mark.slow
def test_rounds_wait_for_the_labelling_app(chat, tmp_path):
    """labels=app: round 0's pairs become tasks and the run stops; a rerun before anyone
    labelled them waits again and adds nothing; once labelled, round 0 trains on people's
    choices (here always the answer shown second) and round 1's pairs are queued."""
    db = tmp_path / "labels.sqlite"
    cfg = _cfg(chat, tmp_path / "app", rounds=2, labels="app", app_db=str(db),
               samples_per_prompt=2)
    first = iterative_dpo(cfg, verbose=False)
    assert first.waiting and first.history == []
    store = LabelStore(f"sqlite:///{db}", labels_per_task=1)
    store.add_annotator("human")
    queued = store.num_tasks()
    assert 0 < queued <= 8
    assert iterative_dpo(cfg, verbose=False).waiting and store.num_tasks() == queued
    chosen = {}
    while (a := store.next_assignment("human")) is not None:
        ranks = [0, 0]
        ranks[a.shown_order[0]], ranks[a.shown_order[1]] = 1, 0
        store.submit(a.id, "human", ranks)
        chosen[a.task.prompt] = a.task.responses[a.shown_order[1]]
    second = iterative_dpo(cfg, verbose=False)
    assert second.waiting and len(second.history) == 1
    assert second.history[0]["pairs"] == second.history[0]["human_labels"] == queued
    labels = [json.loads(x) for x in
              IterativeLayout(tmp_path / "app").round(0).labels.read_text().splitlines()]
    for r in labels:  # the app stores a conversation as JSON; the labels have it back
        assert isinstance(r["prompt"], list) and r["annotator_id"] == "human"
        assert r["chosen"][0]["content"] == chosen[json.dumps(r["prompt"])]
    assert store.num_tasks() > queued  # round 1's pairs are in the app
    store.close()


def test_missing_policy_is_a_named_error(tmp_path, chat):
    with pytest.raises(models.CheckpointFormatError, match="policy_dir=.*does not exist"):
        iterative_dpo(_cfg(chat, tmp_path / "x", policy_dir=str(tmp_path / "none")))
    with pytest.raises(models.CheckpointFormatError, match="reward_dir=.*does not exist"):
        iterative_dpo(_cfg(chat, tmp_path / "y", judge="reward_model",
                           reward_dir=str(tmp_path / "none")))


def test_inputs_that_cannot_work_leave_no_run_config(tmp_path, chat):
    """A policy_dir that is no model, a prompts file with a bad line, a missing chat template
    or reward model, a constitution whose LM judge is not given and an app database that
    cannot be opened stop by name before the run directory records a config, so the corrected
    command starts the run there."""
    (tmp_path / "notmodel").mkdir()
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(open(chat["prompts"]).read() + '{"prompt": [{"role": "user"\n')
    run = tmp_path / "run"
    with pytest.raises(models.CheckpointFormatError, match="notmodel: no config.json"):
        iterative_dpo(_cfg(chat, run, policy_dir=str(tmp_path / "notmodel")))
    with pytest.raises(data.DataFormatError, match=r"prompts.jsonl:\d+: not valid JSON"):
        iterative_dpo(_cfg(chat, run, prompts_file=str(bad)))
    with pytest.raises(data.ChatTemplateError, match="none.jinja'?: cannot be read"):
        iterative_dpo(_cfg(chat, run, chat_template=str(tmp_path / "none.jinja")))
    with pytest.raises(models.CheckpointFormatError, match="reward_dir=.*does not exist"):
        iterative_dpo(_cfg(chat, run, judge="reward_model", reward_dir=str(tmp_path / "no")))
    with pytest.raises(train.ConfigError, match="is judged by 'lm'"):
        lm_only = tmp_path / "lm.toml"
        lm_only.write_text('[[principles]]\nid = "x"\nquestion = "Which is kinder?"\n'
                           'judge = "lm"\n')
        iterative_dpo(_cfg(chat, run, judge="constitution", constitution=str(lm_only)))
    with pytest.raises(train.ConfigError, match="app_db=.*cannot open"):
        iterative_dpo(_cfg(chat, run, labels="app",
                           app_db=str(tmp_path / "missing" / "labels.sqlite")))
    assert not IterativeLayout(run).config.exists()


def test_app_tasks_keep_their_ids_when_a_run_goes_on_with_more_steps(tmp_path):
    """The app's task ids of a run stay when it goes on with settings a resume may change
    (more offline steps, another log cadence or compile cache), so people's labels are found;
    another seed, judge or directory is another run."""
    base = train.config_to_dict(IterativeDPOConfig())
    tag = app_tag(tmp_path, base)
    same = json.loads(json.dumps(base))
    same["offline"].update(steps=99, log_every=7, compile_cache="/tmp/cc")
    same["reward"]["steps"] = 3
    assert app_tag(tmp_path, same) == tag
    for other in ({**base, "seed": 1}, {**base, "judge": "words"}):
        assert app_tag(tmp_path, other) != tag
    assert app_tag(tmp_path / "elsewhere", base) != tag


def test_an_app_database_that_cannot_be_opened_is_a_named_error(tmp_path):
    not_db = tmp_path / "notes.sqlite"
    not_db.write_text("not a database " * 100)
    for where in (not_db, tmp_path / "missing" / "labels.sqlite"):
        cfg = types.SimpleNamespace(app_db=str(where), app_labels_per_task=1,
                                    run_dir=str(tmp_path))
        with pytest.raises(train.ConfigError, match="app_db=.*cannot open the labelling app"):
            app_labels(cfg, [("p", "a", "b")], "it-x-r0", source="iterative_dpo")


def test_the_constitution_judge_compares_every_pair_of_answers():
    """judge=constitution with K = 4 answers: each prompt costs K(K - 1)/2 = 6 judge calls, an
    answer scores its expected wins (a prompt's scores sum to 6), and the pair is the best
    answer against the worst."""
    cfg = _replace(IterativeDPOConfig(), dict(judge="constitution", reward_dir="",
                                              samples_per_prompt=4))
    samples = [{"prompt": "how was the day?",
                "responses": ["a wonderful happy day", "bad awful day", "a day", "fine"]},
               {"prompt": [{"role": "user", "content": "and the cat?"}],
                "responses": ["the cat is lovely", "terrible cat", "cat", "a cat sat"]}]
    records, stats = judge_labels(cfg, samples, None)
    assert stats["judge_calls"] == 2 * 6 and stats["human_labels"] == 0
    for s in samples:
        assert sum(s["scores"]) == pytest.approx(6.0, abs=1e-5)
    picks = best_vs_worst([s["scores"] for s in samples], [s["responses"] for s in samples])
    assert stats["prompts_without_pair"] == picks.count(None) == 0
    assert [data.response_text(r["chosen"]) for r in records] == \
        [s["responses"][b] for s, (b, _) in zip(samples, picks)]
    assert [data.response_text(r["rejected"]) for r in records] == \
        [s["responses"][w] for s, (_, w) in zip(samples, picks)]


@pytest.mark.parametrize("objectives, message", [
    ((), "has one head; it needs an ensemble"),
    (("helpful", "harmless"), r"heads for the objectives \['helpful', 'harmless'\], whose "
                              "disagreement is no uncertainty"),
])
def test_disagreement_needs_an_ensemble_not_objectives(tmp_path, chat, objectives, message):
    """acquisition=disagreement reads the spread of an ensemble's members; a single head has
    none and a multi-objective model's heads differ by design, so both are refused by name."""
    from rlhf_jax import reward
    from rlhf_jax.studies.iterative import people_pairs, RewardJudge

    config, _ = models.load_hf_checkpoint(chat["policy"])
    model = models.DecoderModel(config, heads=("reward",),
                                num_reward_outputs=max(1, len(objectives)))
    reward.save_reward_model(tmp_path / "rm", config,
                             models.init_params(model, jax.random.key(0)),
                             tokenizer=models.load_tokenizer(chat["policy"], config),
                             metadata={"objectives": list(objectives)} if objectives else {})
    cfg = _cfg(chat, tmp_path / "run", labels="simulated", acquisition="disagreement",
               reward_dir=str(tmp_path / "rm"))
    samples = [{"prompt": "hi", "responses": ["a", "b", "c"]}]
    rm = RewardJudge(cfg.reward_dir, cfg)
    assert rm.objectives == objectives
    with pytest.raises(train.ConfigError, match=message):
        people_pairs(cfg, 0, samples, rm)


def test_lengths_past_a_gpt2_policys_positions_are_refused_by_name(tmp_path, chat):
    """A GPT-2 policy (128 learned positions): a prompt of 120 tokens and answers of 20 (22 as
    the stages read them, with the end of turn) do not fit, which is said before anything is
    written, not found by the sampler's compiler."""
    config = models.preset("tiny-gpt2").replace(vocab_size=384)
    params = models.init_params(models.DecoderModel(config), jax.random.key(0))
    tok = models.load_tokenizer(chat["policy"], models.load_hf_config(chat["policy"]))
    models.save_hf_checkpoint(tmp_path / "gpt2", config, params, tokenizer=tok)
    cfg = _cfg(chat, tmp_path / "run", policy_dir=str(tmp_path / "gpt2"), max_prompt_len=120,
               max_new_tokens=20, max_response_len=0)
    with pytest.raises(train.ConfigError, match=r"max_prompt_len=120 \+ 22 answer tokens .* "
                                                r"exceed the policy's 128 learned positions"):
        iterative_dpo(cfg, verbose=False)
    assert not (tmp_path / "run").exists()
