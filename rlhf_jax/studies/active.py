"""Active learning for the reward model: sample a pool of response pairs → score it with the
reward-model ensemble → acquire k pairs → get them labelled → update the reward model (warm
start) → evaluate on a fixed held-out set; checkpointed between rounds.

Labels come from simulated annotators (Bradley–Terry around the gold judge, with a temperature
and a position bias each), from a preference file (pool-based: the file's pairs are the pool and
a pair's label is revealed when it is acquired), or from the labelling app: the acquired pairs
become tasks in its database, the run stops, and the next run reads their labels and goes on.

Pairs are kept in *shown order* (response 0 is shown first), so annotator models can learn a
position bias (`rlhf_jax.reward.annotators`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import data, models, reward, train
from rlhf_jax.checkpoint import CheckpointConfig, Checkpointer
from rlhf_jax.data.preference import PAD, batch_examples, tokenize_record
from rlhf_jax.models.transformer import last_token_index
from rlhf_jax.reward import acquisition
from rlhf_jax.reward.annotators import init_annotator_params, make_annotator_reward_loss
from rlhf_jax.labelling.tasks import sample_tasks
from rlhf_jax.sampling import TextSampler
from rlhf_jax.stages.layout import RunLayout, check_run_config, record_run_config

LABEL_SOURCES = ("simulated", "file", "app")
BATCH_MODES = ("top", "per_prompt", "diverse")


# ---- the built-in task: pools, gold, simulated annotators ------------------------------------

def builtin_pairs(rng: np.random.Generator, n: int, length: int = 6) -> list[tuple]:
    """n (prompt, response, response) pairs of the built-in task's sentences."""
    out = []
    for _ in range(n):
        prompt = str(rng.choice(data.builtin.PROMPTS))
        a = data.builtin.random_response(rng, length)
        b = data.builtin.random_response(rng, length)
        while b == a:
            b = data.builtin.random_response(rng, length)
        out.append((prompt, a, b))
    return out


def gold_delta(pairs: Sequence[tuple], gold_fn=None) -> np.ndarray:
    """g(first) − g(second) by the gold judge (default: the built-in one)."""
    g = gold_fn or (lambda prompt, text: data.builtin.gold_score(text))
    return np.array([g(p, a) - g(p, b) for p, a, b in pairs], np.float64)


@dataclasses.dataclass(frozen=True)
class SimulatedAnnotators:
    """Annotator a prefers the first-shown response with probability σ(Δ_gold/τ_a + β_a)
    (Bradley–Terry with a temperature and a position bias each)."""

    temperatures: tuple = (0.15, 0.3, 0.6)
    biases: tuple = ()  # per annotator (empty: none)
    gold_fn: Optional[Callable] = None

    def ids(self) -> list[str]:
        return [f"sim_{i}" for i in range(len(self.temperatures))]

    def label(self, pairs: Sequence[tuple], rng: np.random.Generator,
              who: Optional[Sequence[int]] = None) -> list[dict]:
        """One label per pair, by annotator `who[i]` (default: drawn uniformly)."""
        delta = gold_delta(pairs, self.gold_fn)
        if who is None:
            who = rng.integers(len(self.temperatures), size=len(pairs))
        bias = np.asarray(self.biases or [0.0] * len(self.temperatures), np.float64)
        temps = np.asarray(self.temperatures, np.float64)
        z = delta / temps[np.asarray(who)] + bias[np.asarray(who)]
        first = rng.random(len(pairs)) < 1.0 / (1.0 + np.exp(-z))
        return [pair_record(p, first_chosen=bool(f), annotator=f"sim_{int(w)}")
                for p, f, w in zip(pairs, first, who)]

    def rate(self, items: Sequence[tuple], rng: np.random.Generator, noise: float = 1.0,
             scale: tuple = (1, 7)) -> list[dict]:
        """Likert ratings of single responses ((prompt, response) items): round(mid + gold +
        N(0, noise²)), clipped to the scale."""
        g = self.gold_fn or (lambda prompt, text: data.builtin.gold_score(text))
        lo, hi = scale
        mid = (lo + hi) / 2
        out = []
        for p, r in items:
            y = int(np.clip(np.rint(mid + g(p, r) + rng.normal(0, noise)), lo, hi))
            out.append({"prompt": p, "responses": [r], "ranks": [0], "rating": float(y),
                        "annotator_id": "sim_rating"})
        return out


def pair_key(pair: Sequence) -> tuple:
    """A comparison whichever way round its responses are listed: (prompt, {a, b})."""
    return (pair[0], frozenset(pair[1:]))


def pair_record(pair: tuple, *, first_chosen: bool, annotator: str = "") -> dict:
    """A pairwise record in shown order: responses [first shown, second shown], ranks say
    which was chosen."""
    p, a, b = pair
    return {"prompt": p, "responses": [a, b], "ranks": [0, 1] if first_chosen else [1, 0],
            "annotator_id": annotator}


# ---- the reward-model learner ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """The reward-model ensemble the loop trains."""

    model_dir: str = ""  # local HF directory to start from; empty: `preset`, randomly initialised
    preset: str = "tiny-llama"  # model size when model_dir is empty
    ensemble: int = 4  # reward heads on the shared backbone (members of the ensemble)
    bootstrap: bool = True  # each member sees its own Poisson(1) resample of the labels
    learning_rate: float = 1e-3  # Adam step size (constant after warmup)
    batch_size: int = 32  # labels per step
    max_prompt_len: int = 8  # prompt tokens kept
    max_response_len: int = 10  # response tokens kept
    annotator_model: str = "none"  # none | temperature | temperature_bias (reward.annotators)
    rating_range: tuple = (1.0, 7.0)  # Likert scale of rating records

    def __post_init__(self):
        if self.ensemble < 1 or self.batch_size < 1:
            raise ValueError("ensemble and batch_size must be >= 1")
        if self.annotator_model not in ("none", "temperature", "temperature_bias"):
            raise ValueError(f"annotator_model={self.annotator_model!r}: expected none, "
                             "temperature or temperature_bias")


class Learner:
    """A reward-model ensemble trained on in-memory labels, its jitted step and scorer compiled
    once for fixed shapes (so many rounds and runs reuse the programs)."""

    def __init__(self, cfg: LearnerConfig, tokenizer, annotators: Sequence[str] = ()):
        self.cfg, self.tok = cfg, tokenizer
        self.annotators = list(annotators)
        self.index = {a: i for i, a in enumerate(self.annotators)}
        if cfg.model_dir:
            config = models.load_hf_config(cfg.model_dir)
        else:
            config = models.preset(cfg.preset, vocab_size=len(tokenizer))
        self.config = config
        self.model = models.DecoderModel(config, heads=("reward",),
                                         num_reward_outputs=cfg.ensemble)
        self.seq_len = cfg.max_prompt_len + cfg.max_response_len
        opt = train.OptimizerConfig(learning_rate=cfg.learning_rate, warmup_steps=10,
                                    total_steps=10**9, schedule="constant", weight_decay=0.0)
        self._opt_cfg = opt
        self.state = None
        if cfg.annotator_model == "none":
            loss = reward.make_reward_loss(self.model, reward.RewardLossConfig(),
                                           bootstrap=cfg.bootstrap)
        else:
            loss = make_annotator_reward_loss(
                self.model, use_bias=cfg.annotator_model == "temperature_bias")
        self._loss = loss
        self._step = None
        self._score = jax.jit(self._score_fn)
        self._init = jax.jit(lambda key: nn.unbox(self.model.init(
            key, jnp.zeros((1, self.seq_len), jnp.int32))["params"]))  # compiled once

    def init(self, seed: int) -> None:
        """Fresh parameters (from `model_dir` when given) and optimiser state."""
        self.seed = seed
        key = jax.random.key(seed)
        if self.cfg.model_dir:
            _, params = models.load_hf_checkpoint(self.cfg.model_dir, lm_head=False)
            fresh = self._init(key)
            params = {**fresh, **{k: v for k, v in params.items() if k in fresh}}
        else:
            params = self._init(key)
        if self.cfg.annotator_model != "none":
            params = {"model": params,
                      "annotators": init_annotator_params(max(1, len(self.annotators)))}
        tx = train.make_optimizer(self._opt_cfg, params)
        if self._step is None:
            self._step = jax.jit(train.make_train_step(self._loss, tx), donate_argnums=0)
        self.state = train.create_train_state(params, tx, jax.random.fold_in(key, 1))

    @property
    def reward_params(self):
        p = self.state.params
        return p["model"] if self.cfg.annotator_model != "none" else p

    def examples(self, records: Sequence[dict]) -> list[dict]:
        """Tokenised examples (the layout of built datasets) of in-memory records."""
        lo, hi = self.cfg.rating_range
        counts = {"prompts_truncated": 0, "responses_truncated": 0}
        out = []
        for rec in records:
            prompt, responses = tokenize_record(rec, self.tok, self.cfg.max_prompt_len,
                                                self.cfg.max_response_len,
                                                self.tok.eos_token_id, counts)
            rating = rec.get("rating")
            out.append({"prompt": prompt, "responses": responses,
                        "ranks": np.asarray(rec["ranks"], np.int32),
                        "rating": np.float32(0.0 if rating is None else
                                             data.normalise_rating(rating, lo, hi)),
                        "has_rating": np.int32(rating is not None),
                        "annotator": np.int32(self.index.get(rec.get("annotator_id", ""), -1))})
        return out

    def train(self, records: Sequence[dict], steps: int, seed: int) -> dict:
        """`steps` Adam steps on batches drawn from `records` (shuffled, repeated), continuing
        from the current parameters and optimiser state. Returns the last step's metrics."""
        if not records or steps <= 0:
            return {}
        examples = self.examples(records)
        rng = np.random.default_rng(seed)
        seed_offset = (self.seed % 1000) * 1_000_000
        order = np.zeros(0, np.int64)
        metrics = {}
        for _ in range(steps):  # shuffled epochs, batches of a fixed size across epochs
            while order.size < self.cfg.batch_size:
                order = np.concatenate([order, rng.permutation(len(examples))])
            idx, order = order[:self.cfg.batch_size], order[self.cfg.batch_size:]
            # indices key each example's bootstrap weights; the seed offsets them per run
            batch = batch_examples([examples[i] for i in idx], indices=idx + seed_offset,
                                   prompt_len=self.cfg.max_prompt_len, num_responses=2,
                                   pad_id=self.tok.pad_token_id or 0)
            self.state, metrics = self._step(self.state, batch)
        return {k: float(v) for k, v in jax.device_get(metrics).items()}

    def _score_fn(self, params, tokens, mask):
        b = tokens.shape[0]
        out = self.model.apply({"params": params}, tokens.reshape(b * 2, -1),
                               mask.reshape(b * 2, -1))
        r = out.reward.reshape(b, 2, -1)  # [B, 2, M]
        idx = last_token_index(mask.reshape(b * 2, -1))
        last = jnp.take_along_axis(out.hidden, idx[:, None, None], axis=1)[:, 0]
        last = last.reshape(b, 2, -1)
        return r, last[:, 0] - last[:, 1]

    def score_pairs(self, pairs: Sequence[tuple], chunk: int = 256) -> tuple:
        """(Δ [N, M] reward differences first − second per member, embeddings [N, D])."""
        recs = [pair_record(p, first_chosen=True) for p in pairs]
        exs = self.examples(recs)
        deltas, embs = [], []
        pad_id = self.tok.pad_token_id or 0
        for start in range(0, len(exs), chunk):
            part = exs[start:start + chunk]
            seq = np.full((chunk, 2, self.seq_len), PAD, np.int32)
            for i, ex in enumerate(part):
                seq[i, :, :self.cfg.max_prompt_len] = ex["prompt"]
                seq[i, :, self.cfg.max_prompt_len:] = ex["responses"]
            seq[len(part):] = seq[0] if part else 0
            mask = (seq != PAD).astype(np.int32)
            r, e = self._score(self.reward_params, np.where(seq == PAD, pad_id, seq), mask)
            r, e = jax.device_get((r, e))
            deltas.append(r[:len(part), 0] - r[:len(part), 1])
            embs.append(e[:len(part)])
        return np.concatenate(deltas), np.concatenate(embs)

    def accuracy(self, pairs: Sequence[tuple], gold: np.ndarray) -> float:
        """How often the ensemble's mean reward orders a pair as `gold` (Δ_gold ≠ 0) does."""
        delta, _ = self.score_pairs(pairs)
        keep = gold != 0
        return float(np.mean(np.sign(delta.mean(1)[keep]) == np.sign(gold[keep])))

    def annotator_parameters(self) -> dict:
        """Learned {annotator: (τ, β)} when an annotator model is trained."""
        if self.cfg.annotator_model == "none":
            return {}
        from rlhf_jax.reward.annotators import temperatures
        ap = self.state.params["annotators"]
        tau, beta = jax.device_get((temperatures(ap), ap["bias"]))
        return {a: (float(tau[i]), float(beta[i])) for a, i in self.index.items()}


# ---- acquisition ------------------------------------------------------------------------------

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
        prompts = {p: i for i, p in enumerate(dict.fromkeys(q for q, _, _ in pool))}
        groups = np.array([prompts[q] for q, _, _ in pool], np.int32)
        idx = acquisition.select_top_k(scores, k, groups, num_groups=len(prompts),
                                       max_per_group=max_per_prompt)
        idx = np.asarray(idx)
        if (idx < 0).any():  # the cap left too few: fill with the best of the rest
            chosen = set(idx[idx >= 0].tolist())
            rest = [int(i) for i in np.argsort(-np.asarray(scores)) if int(i) not in chosen]
            idx = np.concatenate([idx[idx >= 0], rest[:int((idx < 0).sum())]])
    else:
        idx = acquisition.select_top_k(scores, k)
    return [int(i) for i in np.asarray(idx)]


# ---- the loop -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ActiveConfig:
    """Rounds of pool sampling → ensemble scoring → acquisition → labelling → warm-started
    training → held-out evaluation, checkpointed after every round (rerun to resume)."""

    run_dir: str = "runs/active"  # checkpoints, labels.jsonl and history.jsonl
    seed: int = 0  # seeds the model, the pools, the labels and the held-out set
    acquisition: str = "bald"  # random | entropy | disagreement | bald
    batch_mode: str = "per_prompt"  # top | per_prompt (at most max_per_prompt) | diverse
    # per_prompt: pairs per prompt in one round, while enough prompts remain (then by score)
    max_per_prompt: int = 2
    diversity: float = 1.0  # diverse: weight of the distance term
    rounds: int = 8  # acquisition rounds after the initial labels
    initial_labels: int = 40  # random labels before the first acquisition
    labels_per_round: int = 40  # pairs acquired per round
    pool_size: int = 1000  # candidate pairs sampled per round
    steps_per_round: int = 60  # optimiser steps after each round's labels (warm start)
    initial_steps: int = 100  # optimiser steps on the initial labels
    heldout_pairs: int = 1000  # fixed evaluation pairs, judged by gold
    labels: str = "simulated"  # simulated | file | app
    annotator_temperatures: str = "0.15,0.3,0.6"  # simulated annotators' Bradley-Terry noise
    annotator_biases: str = ""  # simulated annotators' bias toward the first shown (empty: 0)
    policy_dir: str = ""  # sample the pool from this policy (empty: the built-in generator)
    labels_file: str = ""  # labels=file: pairwise JSONL whose pairs are the pool
    app_db: str = ""  # labels=app: the labelling app's database (path or URL)
    app_labels_per_task: int = 1  # labels=app: annotators per acquired pair
    learner: LearnerConfig = LearnerConfig()

    def __post_init__(self):
        if self.acquisition not in acquisition.ACQUISITIONS:
            raise ValueError(f"acquisition={self.acquisition!r}: expected one of "
                             f"{acquisition.ACQUISITIONS}")
        if self.batch_mode not in BATCH_MODES:
            raise ValueError(f"batch_mode={self.batch_mode!r}: expected one of {BATCH_MODES}")
        if self.labels not in LABEL_SOURCES:
            raise ValueError(f"labels={self.labels!r}: expected one of {LABEL_SOURCES}")
        if self.labels == "file" and not self.labels_file:
            raise ValueError("labels=file needs labels_file (a pairwise JSONL)")
        if self.labels == "app" and not self.app_db:
            raise ValueError("labels=app needs app_db (the labelling app's database)")
        for name in ("rounds", "initial_labels", "labels_per_round", "pool_size",
                     "heldout_pairs"):
            if getattr(self, name) < (0 if name == "rounds" else 1):
                raise ValueError(f"{name}={getattr(self, name)}: expected a positive count")
        if self.learner.ensemble < 2 and self.acquisition in ("disagreement", "bald"):
            raise ValueError(f"acquisition={self.acquisition} needs an ensemble: "
                             "learner.ensemble >= 2")
        if self.learner.annotator_model != "none" and self.labels != "simulated":
            raise ValueError("learner.annotator_model needs labels=simulated: with a file or "
                             "the app the annotators are not known when the model is built")
        if self.labels_per_round > self.pool_size:
            raise ValueError(f"labels_per_round={self.labels_per_round} exceeds pool_size="
                             f"{self.pool_size}")

    def annotators(self) -> SimulatedAnnotators:
        temps = tuple(float(t) for t in self.annotator_temperatures.split(",") if t.strip())
        biases = tuple(float(b) for b in self.annotator_biases.split(",") if b.strip())
        if biases and len(biases) != len(temps):
            raise train.ConfigError(f"annotator_biases has {len(biases)} values for "
                                    f"{len(temps)} annotators")
        return SimulatedAnnotators(temps, biases)


def _rng_state(rng: np.random.Generator) -> dict:
    return json.loads(json.dumps(rng.bit_generator.state))


def _rng_from(state: dict) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


class _Oracle:
    """Where labels come from: `pool(rng, n)` candidate pairs, `label(pairs, rng)` records,
    or None while the labelling app has not labelled them yet."""

    def __init__(self, cfg: ActiveConfig, layout: RunLayout, tokenizer):
        self.cfg, self.sim = cfg, cfg.annotators()
        self.file_labels = {}
        if cfg.labels == "file":
            recs, _ = data.read_records(cfg.labels_file, "pairwise")
            for r in recs:  # responses in the file's order: chosen first
                key = (r["prompt"], *sorted(r["responses"]))
                self.file_labels[key] = (r["responses"][0], r["annotator_id"])
            self.file_pairs = [(k[0], k[1], k[2]) for k in self.file_labels]
        # the policy is loaded once; every round's pool reuses it and its compiled sampler
        self.sampler = TextSampler(cfg.policy_dir, max_len=64) if cfg.policy_dir else None

    def pool(self, rng: np.random.Generator, n: int, exclude: set) -> list[tuple]:
        """n candidate pairs (fewer in file mode when the file runs out), none of whose
        `pair_key` is in `exclude`."""
        if self.cfg.labels == "file":
            left = [p for p in self.file_pairs if pair_key(p) not in exclude]
            idx = rng.permutation(len(left))[:n]
            return [left[i] for i in idx]
        if self.sampler is not None:
            prompts = [str(rng.choice(data.builtin.PROMPTS)) for _ in range(n)]
            tasks = sample_tasks(self.cfg.policy_dir, prompts, num_responses=2,
                                 seed=int(rng.integers(2**31)), sampler=self.sampler)
            return [(t["prompt"], *t["responses"]) for t in tasks
                    if pair_key((t["prompt"], *t["responses"])) not in exclude]
        return [p for p in builtin_pairs(rng, n) if pair_key(p) not in exclude]

    def label(self, pairs: list[tuple], rng: np.random.Generator, tag: str):
        if self.cfg.labels == "simulated":
            return self.sim.label(pairs, rng)
        if self.cfg.labels == "file":
            out = []
            for p in pairs:
                chosen, who = self.file_labels[(p[0], *sorted(p[1:]))]
                out.append(pair_record(p, first_chosen=chosen == p[1], annotator=who))
            return out
        return _app_labels(self.cfg, pairs, tag)


def _app_labels(cfg: ActiveConfig, pairs: list[tuple], tag: str):
    """Put the pairs into the labelling app as tasks (ids `<tag>-<i>`), and return their labels
    once every one has `app_labels_per_task` of them (else None: wait). Each label becomes a
    record in the order that annotator was shown the responses. A stored task with the same id
    but other texts (another run sharing the database) stops the run rather than borrow its
    labels."""
    from rlhf_jax.labelling.store import LabelStore

    url = cfg.app_db if "://" in cfg.app_db else f"sqlite:///{Path(cfg.app_db).resolve()}"
    store = LabelStore(url, labels_per_task=cfg.app_labels_per_task)
    try:
        store.add_tasks([{"prompt": p, "responses": [a, b], "id": f"{tag}-{i}",
                          "meta": {"source": "active_learning", "run": cfg.run_dir}}
                         for i, (p, a, b) in enumerate(pairs)])
        labs = [lab for lab in store.labels() if lab.task.uid.startswith(f"{tag}-")]
    finally:
        store.close()
    by_task = {}
    for lab in labs:
        by_task.setdefault(lab.task.uid, []).append(lab)
    if sum(len(v) >= cfg.app_labels_per_task for v in by_task.values()) < len(pairs):
        return None
    out = []
    for i, (p, a, b) in enumerate(pairs):
        for lab in by_task[f"{tag}-{i}"]:
            if (lab.task.prompt, lab.task.responses) != (p, [a, b]):
                raise train.ConfigError(
                    f"app_db={cfg.app_db}: task {lab.task.uid} holds other texts than this "
                    "run acquired; another run uses the same task ids")
            if lab.ranks[0] == lab.ranks[1]:
                continue  # a tie says nothing about which is better
            first, second = lab.shown_order
            resp = [a, b]
            out.append(pair_record((p, resp[first], resp[second]),
                                   first_chosen=lab.ranks[first] < lab.ranks[second],
                                   annotator=lab.annotator_id))
    return out


@dataclasses.dataclass
class ActiveResult:
    run_dir: str
    history: list  # one row per round: labels, accuracy, ...
    labelled: list  # every label so far
    waiting: bool = False  # labels=app: stopped until the app has the labels


def active_learning(cfg: ActiveConfig, *, tokenizer=None, learner: Optional[Learner] = None,
                    verbose: bool = True) -> ActiveResult:
    """Run (or resume) the active-learning loop of `cfg`; see the module docstring."""
    layout = RunLayout(cfg.run_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    config_dict = train.config_to_dict(cfg)
    config_dict.pop("rounds")  # more rounds continue the same run
    check_run_config(layout.config, config_dict)
    record_run_config(layout.config, config_dict)
    if tokenizer is None:
        tokenizer = (models.load_tokenizer(cfg.learner.model_dir) if cfg.learner.model_dir
                     else train.on_main_process(data.builtin.train_tokenizer, layout.tokenizer)
                     or models.load_tokenizer(layout.tokenizer))
    oracle = _Oracle(cfg, layout, tokenizer)
    if learner is None:
        learner = Learner(cfg.learner, tokenizer, cfg.annotators().ids())
    learner.init(cfg.seed)
    # the fixed held-out set: the same for every acquisition function of a seed
    eval_rng = np.random.default_rng([cfg.seed, 7])
    if cfg.labels == "file":  # held out from the file, scored by the file's own labels
        need = cfg.heldout_pairs + cfg.initial_labels + cfg.rounds * cfg.labels_per_round
        if len(oracle.file_pairs) < need:
            raise train.ConfigError(
                f"labels_file={cfg.labels_file}: {len(oracle.file_pairs)} distinct pairs, but "
                f"heldout_pairs + initial_labels + rounds * labels_per_round = {need}")
        heldout = oracle.pool(eval_rng, cfg.heldout_pairs, set())
        gold = np.array([1.0 if r["ranks"][0] == 0 else -1.0
                         for r in oracle.label(heldout, eval_rng, "")])
    else:  # built-in pairs judged by the gold judge
        heldout = builtin_pairs(eval_rng, cfg.heldout_pairs)
        gold = gold_delta(heldout)
    ckpt = Checkpointer(CheckpointConfig(directory=str(layout.checkpoints), save_every=1,
                                         keep_last=2, async_save=False))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), learner.state)
    restored = ckpt.restore(abstract)
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

