"""The active-learning loop: exact resume between rounds, and labels from a preference file and
from the labelling app's database."""
import json

import numpy as np
import pytest

from rlhf_jax import data, train
from rlhf_jax.labelling import LabelStore
from rlhf_jax.studies.active import ActiveConfig, active_learning
from rlhf_jax.studies.learner import Learner, LearnerConfig
from rlhf_jax.studies.pairs import SimulatedAnnotators, builtin_pairs, pair_record

TINY = dict(initial_labels=8, labels_per_round=8, pool_size=32, steps_per_round=4,
            initial_steps=6, heldout_pairs=64)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One tokenizer and one compiled learner for the module's runs."""
    tok = data.builtin.train_tokenizer(tmp_path_factory.mktemp("tok"))
    return tok, Learner(LearnerConfig(ensemble=3), tok, SimulatedAnnotators().ids())


def test_resume_between_rounds_is_exact(tmp_path, shared):
    tok, learner = shared
    kw = dict(TINY, acquisition="bald", batch_mode="diverse", learner=LearnerConfig(ensemble=3))
    whole = active_learning(ActiveConfig(run_dir=str(tmp_path / "a"), rounds=3, **kw),
                            tokenizer=tok, learner=learner, verbose=False)
    first = active_learning(ActiveConfig(run_dir=str(tmp_path / "b"), rounds=1, **kw),
                            tokenizer=tok, learner=learner, verbose=False)
    assert len(first.history) == 2
    resumed = active_learning(ActiveConfig(run_dir=str(tmp_path / "b"), rounds=3, **kw),
                              tokenizer=tok, learner=learner, verbose=False)
    assert resumed.labelled == whole.labelled  # same pool draws, acquisitions and labels
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in whole.history]
    assert [r["labels"] for r in whole.history] == [8, 16, 24, 32]
    saved = [json.loads(x) for x in (tmp_path / "b" / "labels.jsonl").read_text().splitlines()]
    assert saved == whole.labelled
    # acquired pairs are new each round: no pair is labelled twice
    pairs = [(r["prompt"], *r["responses"]) for r in whole.labelled]
    assert len(set(pairs)) == len(pairs)
    # another acquisition function in the same run directory is refused
    from rlhf_jax.stages import ConfigMismatchError
    with pytest.raises(ConfigMismatchError, match="acquisition"):
        active_learning(ActiveConfig(run_dir=str(tmp_path / "b"), rounds=3,
                                     **{**kw, "acquisition": "entropy"}),
                        tokenizer=tok, learner=learner, verbose=False)


def test_labels_from_a_preference_file(tmp_path, shared):
    tok, learner = shared
    rng = np.random.default_rng(0)
    pairs = builtin_pairs(rng, 200)
    recs = SimulatedAnnotators().label(pairs, rng)
    # the file lists chosen first, as pairwise files do
    path = data.builtin.write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": r["prompt"], "chosen": r["responses"][r["ranks"].index(0)],
         "rejected": r["responses"][r["ranks"].index(1)], "annotator_id": r["annotator_id"]}
        for r in recs])
    def cfg(d, rounds):
        return ActiveConfig(run_dir=str(tmp_path / d), rounds=rounds, labels="file",
                            labels_file=str(path), **TINY, learner=LearnerConfig(ensemble=3))
    out = active_learning(cfg("f", 2), tokenizer=tok, learner=learner, verbose=False)
    active_learning(cfg("g", 1), tokenizer=tok, learner=learner, verbose=False)
    resumed = active_learning(cfg("g", 2), tokenizer=tok, learner=learner, verbose=False)
    assert resumed.labelled == out.labelled  # the file's pool resumes exactly too
    assert [r["accuracy"] for r in resumed.history] == [r["accuracy"] for r in out.history]
    truth = {(r["prompt"], frozenset(r["responses"])): r["responses"][r["ranks"].index(0)]
             for r in recs}
    assert len(out.labelled) == 24
    keys = [(r["prompt"], frozenset(r["responses"])) for r in out.labelled]
    assert len(set(keys)) == len(keys)  # no pair acquired twice
    with pytest.raises(Exception, match="distinct pairs"):
        active_learning(ActiveConfig(run_dir=str(tmp_path / "h"), rounds=1, labels="file",
                                     labels_file=str(path), **{**TINY, "heldout_pairs": 190},
                                     learner=LearnerConfig(ensemble=3)),
                        tokenizer=tok, learner=learner, verbose=False)
    for r in out.labelled:
        assert truth[(r["prompt"], frozenset(r["responses"]))] == \
            r["responses"][r["ranks"].index(0)]


def test_labels_from_the_labelling_app(tmp_path, shared):
    tok, learner = shared
    db = tmp_path / "labels.sqlite"
    cfg = ActiveConfig(run_dir=str(tmp_path / "app"), rounds=1, labels="app", app_db=str(db),
                       **TINY, learner=LearnerConfig(ensemble=3))
    run = lambda: active_learning(cfg, tokenizer=tok, learner=learner, verbose=False)  # noqa
    first = run()
    assert first.waiting and first.history == []
    store = LabelStore(f"sqlite:///{db}", labels_per_task=1)
    store.add_annotator("human")
    assert store.num_tasks() == 8
    assert run().waiting  # nothing labelled yet: still waiting, nothing duplicated
    assert store.num_tasks() == 8
    chosen = {}
    while (a := store.next_assignment("human")) is not None:  # prefer the shown-second one
        ranks = [0, 0]
        ranks[a.shown_order[0]], ranks[a.shown_order[1]] = 1, 0
        store.submit(a.id, "human", ranks)
        chosen[(a.task.prompt, frozenset(a.task.responses))] = a.task.responses[a.shown_order[1]]
    second = run()
    assert second.waiting and len(second.history) == 1 and len(second.labelled) == 8
    for r in second.labelled:
        assert r["annotator_id"] == "human" and r["ranks"] == [1, 0]  # second shown won
        assert chosen[(r["prompt"], frozenset(r["responses"]))] == r["responses"][1]
    assert store.num_tasks() == 16  # round 1's acquisitions are queued in the app
    store.close()


def test_pair_records_keep_shown_order():
    assert pair_record(("p", "a", "b"), first_chosen=False) == {
        "prompt": "p", "responses": ["a", "b"], "ranks": [1, 0], "annotator_id": ""}


def test_pool_sampled_from_a_policy(tmp_path, shared):
    import jax

    from rlhf_jax.models import DecoderModel, init_params, preset, save_hf_checkpoint
    from tests.hf_reference import train_tiny_tokenizer

    tok, learner = shared
    ptok = train_tiny_tokenizer(tmp_path / "ptok")
    config = preset("tiny-llama", vocab_size=len(ptok))
    policy = save_hf_checkpoint(tmp_path / "policy", config,
                                init_params(DecoderModel(config), jax.random.key(0)),
                                tokenizer=ptok)
    out = active_learning(ActiveConfig(run_dir=str(tmp_path / "p"), rounds=1,
                                       policy_dir=str(policy), **{**TINY, "pool_size": 16},
                                       learner=LearnerConfig(ensemble=3)),
                          tokenizer=tok, learner=learner, verbose=False)
    assert len(out.labelled) == 16
    prompts = set(data.builtin.PROMPTS)
    for r in out.labelled:  # the policy's own samples, not the built-in generator's sentences
        assert r["prompt"] in prompts and r["responses"][0] != r["responses"][1]
        words = set(" ".join(r["responses"]).split())
        assert not words <= set(data.builtin.NEUTRAL + data.builtin.PLEASANT +
                                data.builtin.UNPLEASANT)


def test_a_bad_labels_file_is_refused_before_anything_is_written(tmp_path):
    """The labels file is read and checked first: a file with too few pairs stops the run and
    leaves no config.json, so the corrected rerun is not refused as a different run."""
    rows = [{"prompt": "p", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)]
    path = tmp_path / "few.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(train.ConfigError, match="few.jsonl: 3 distinct pairs, but"):
        active_learning(ActiveConfig(run_dir=str(tmp_path / "run"), labels="file",
                                     labels_file=str(path)), verbose=False)
    assert not (tmp_path / "run").exists()
