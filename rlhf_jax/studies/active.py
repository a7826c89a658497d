"""Active learning for the reward model: sample a pool of response pairs → score it with the
reward-model ensemble → acquire k pairs → get them labelled → update the reward model (warm
start) → evaluate on a fixed held-out set; checkpointed between rounds.

Labels come from simulated annotators (Bradley–Terry around the gold judge, with a temperature
and a position bias each), from a preference file (pool-based: the file's pairs are the pool and
a pair's label is revealed when it is acquired), or from the labelling app: the acquired pairs
become tasks in its database, the run stops, and the next run reads their labels and goes on.

Pairs are kept in *shown order* (response 0 is shown first), so annotator models can learn a
position bias (`rlhf_jax.reward.annotators`). The pieces: `studies.pairs` (pairs, gold,
simulated annotators), `studies.label_sources` (where labels come from) and `studies.learner`
(the reward-model ensemble, trained by the reward stage's step).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Optional, Sequence

import jax
import numpy as np

from rlhf_jax import data, models, train
from rlhf_jax.checkpoint import CheckpointConfig, Checkpointer
from rlhf_jax.reward import acquisition
from rlhf_jax.stages.layout import RunLayout, check_run_config, record_run_config
from rlhf_jax.studies.label_sources import LabelSource
from rlhf_jax.studies.configs.active import BATCH_MODES, LABEL_SOURCES, ActiveConfig  # noqa: F401
from rlhf_jax.studies.learner import Learner
from rlhf_jax.studies.pairs import builtin_pairs, gold_delta, pair_key


def acquire(learner: Learner, pool: Sequence[tuple], k: int, *, function: str, batch_mode: str,
            rng: np.random.Generator, max_per_prompt: int = 1, diversity: float = 1.0
            ) -> list[int]:
    """Indices of the k pool pairs to label next."""
    delta, emb = learner.score_pairs(pool)
    key = jax.random.key(int(rng.integers(2**31)))
    scores = acquisition.acquisition_scores(function, delta, key)
    k = min(k, len(pool))
    if batch_mode == "diverse":
        idx = acquisition.select_diverse(scores, emb, k, diversity)
    elif batch_mode == "per_prompt":
        idx = top_k_per_prompt(scores, [q for q, _, _ in pool], k, max_per_prompt)
    else:
        idx = acquisition.select_top_k(scores, k)
    return [int(i) for i in np.asarray(idx)]


def top_k_per_prompt(scores, prompts: Sequence, k: int, max_per_prompt: int) -> np.ndarray:
    """Indices of the k highest `scores` with at most `max_per_prompt` per prompt
    (`acquisition.select_top_k` over the prompts as groups); when the cap leaves fewer than k,
    the best of the rest fill the batch. `prompts[i]` is item i's prompt (hashable)."""
    ids = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    groups = np.array([ids[q] for q in prompts], np.int32)
    idx = np.asarray(acquisition.select_top_k(scores, k, groups, num_groups=len(ids),
                                              max_per_group=max_per_prompt))
    if (idx < 0).any():  # the cap left too few: fill with the best of the rest
        chosen = set(idx[idx >= 0].tolist())
        rest = [int(i) for i in np.argsort(-np.asarray(scores)) if int(i) not in chosen]
        idx = np.concatenate([idx[idx >= 0], rest[:int((idx < 0).sum())]])
    return idx


def _rng_state(rng: np.random.Generator) -> dict:
    return json.loads(json.dumps(rng.bit_generator.state))


def _rng_from(state: dict) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


@dataclasses.dataclass
class ActiveResult:
    """What a run of the loop leaves: its directory, its per-round history and its labels."""

    run_dir: str
    history: list  # one row per round: labels, accuracy, ...
    labelled: list  # every label so far
    waiting: bool = False  # labels=app: stopped until the app has the labels


def active_learning(cfg: ActiveConfig, *, tokenizer=None, learner: Optional[Learner] = None,
                    verbose: bool = True) -> ActiveResult:
    """Run (or resume) the active-learning loop of `cfg`; see the module docstring."""
    layout = RunLayout(cfg.run_dir)
    config_dict = train.config_to_dict(cfg)
    config_dict.pop("rounds")  # more rounds continue the same run
    oracle = LabelSource(cfg)  # reads and checks a labels file before anything is written
    if cfg.labels == "file":
        need = cfg.heldout_pairs + cfg.initial_labels + cfg.rounds * cfg.labels_per_round
        if len(oracle.file_pairs) < need:
            raise train.ConfigError(
                f"labels_file={cfg.labels_file}: {len(oracle.file_pairs)} distinct pairs, but "
                f"heldout_pairs + initial_labels + rounds * labels_per_round = {need}")
    layout.root.mkdir(parents=True, exist_ok=True)
    check_run_config(layout.config, config_dict)
    record_run_config(layout.config, config_dict)
    if tokenizer is None:
        tokenizer = (models.load_tokenizer(cfg.learner.model_dir) if cfg.learner.model_dir
                     else train.on_main_process(data.builtin.train_tokenizer, layout.tokenizer)
                     or models.load_tokenizer(layout.tokenizer))
    if learner is None:
        learner = Learner(cfg.learner, tokenizer, cfg.annotators().ids())
    learner.init(cfg.seed)
    # the fixed held-out set: the same for every acquisition function of a seed
    eval_rng = np.random.default_rng([cfg.seed, 7])
    if cfg.labels == "file":  # held out from the file, scored by the file's own labels
        heldout = oracle.pool(eval_rng, cfg.heldout_pairs, set())
        gold = np.array([1.0 if r["ranks"][0] == 0 else -1.0
                         for r in oracle.label(heldout, eval_rng, "")])
    else:  # built-in pairs judged by the gold judge
        heldout = builtin_pairs(eval_rng, cfg.heldout_pairs)
        gold = gold_delta(heldout)
    ckpt = Checkpointer(CheckpointConfig(directory=str(layout.checkpoints), save_every=1,
                                         keep_last=2, async_save=False))
    restored = ckpt.restore(learner.abstract_state)
    if restored is not None:
        learner.state = restored.state
        loop = restored.loop_state
        rnd, labelled, history = loop["round"] + 1, loop["labelled"], loop["history"]
        rng = _rng_from(loop["rng"])
        if verbose:
            print(f"resuming after round {loop['round']} ({len(labelled)} labels)", flush=True)
    else:
        rnd, labelled, history = 0, [], []
        rng = np.random.default_rng([cfg.seed, 11])
    pending_file = layout.root / "pending.json"  # pairs waiting for the app's labels
    pending = json.loads(pending_file.read_text()) if pending_file.is_file() else None
    if pending is not None and pending["round"] != rnd:
        pending = None  # left from a round that has since been checkpointed
    if pending is not None:
        rng = _rng_from(pending["rng"])  # as it was after choosing the pairs
    # pairs never to acquire: the held-out set and everything labelled or pending so far
    run_tag = "al-" + hashlib.sha256(json.dumps(
        [str(layout.root.resolve()), config_dict], sort_keys=True).encode()).hexdigest()[:12]
    exclude = {pair_key(h) for h in heldout} | {
        pair_key((r["prompt"], *r["responses"])) for r in labelled}
    if pending is not None:
        exclude |= {pair_key(p) for p in pending["pairs"]}
    try:
        while rnd <= cfg.rounds:
            t0 = time.perf_counter()
            if pending is None:  # choose this round's pairs
                if rnd == 0:
                    pool = oracle.pool(rng, cfg.initial_labels, exclude)
                    picked = list(range(len(pool)))
                else:
                    pool = oracle.pool(rng, cfg.pool_size, exclude)
                    picked = acquire(learner, pool, cfg.labels_per_round,
                                     function=cfg.acquisition, batch_mode=cfg.batch_mode,
                                     rng=rng, max_per_prompt=cfg.max_per_prompt,
                                     diversity=cfg.diversity)
                pending = {"round": rnd, "pairs": [list(pool[i]) for i in picked]}
            pairs = [tuple(p) for p in pending["pairs"]]
            new = oracle.label(pairs, rng, f"{run_tag}-r{rnd}")
            if new is None:  # the labelling app has not labelled them yet: keep and stop
                pending["rng"] = _rng_state(rng)
                data.builtin.write_jsonl(pending_file, [pending])
                if verbose:
                    print(f"round {rnd}: waiting for labels of {len(pairs)} pairs in "
                          f"{cfg.app_db}; rerun when they are labelled", flush=True)
                return ActiveResult(str(layout.root), history, labelled, waiting=True)
            labelled = labelled + new
            exclude |= {pair_key(p) for p in pairs}
            steps = cfg.initial_steps if rnd == 0 else cfg.steps_per_round
            metrics = learner.train(labelled, steps, seed=cfg.seed * 1000 + rnd)
            row = {"round": rnd, "labels": len(labelled),
                   "accuracy": learner.accuracy(heldout, gold),
                   "train_loss": metrics.get("train/loss", float("nan")),
                   "seconds": time.perf_counter() - t0}
            history.append(row)
            if verbose:
                print(json.dumps(row), flush=True)
            pending = None
            ckpt.save(rnd + 1, learner.state, loop_state={
                "round": rnd, "labelled": labelled, "history": history,
                "rng": _rng_state(rng)}, force=True)
            ckpt.wait()
            pending_file.unlink(missing_ok=True)
            rnd += 1
    finally:
        ckpt.close()
    with open(layout.root / "history.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in history)
    data.builtin.write_jsonl(layout.root / "labels.jsonl", labelled)
    return ActiveResult(str(layout.root), history, labelled)

