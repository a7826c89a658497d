"""The reward-model ensemble that the active-learning loop and the annotation studies train: the
reward stage's model, objective, step, scorer and mesh, driven by labels held in memory."""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import PartitionSpec

from rlhf_jax import data, models, reward, sharding, train
from rlhf_jax.data.preference import PAD, batch_examples, tokenize_record
from rlhf_jax.reward.annotators import (init_annotator_params, make_annotator_reward_loss,
                                        temperatures)
from rlhf_jax.stages.common import RunConfig, check_batch_size, jit_train_step, shardings_of
from rlhf_jax.studies.configs.learner import LearnerConfig
from rlhf_jax.studies.pairs import pair_record


class Learner:
    """A reward-model ensemble trained on in-memory labels, warm-started round after round.

    The pieces are the reward stage's (`stages.reward.train_reward_model`): the model and its
    parameters from `models.load_or_init_model`, laid out on the stage's device mesh by its
    logical-axis rules (`mesh`, `rules`: `RunConfig`'s defaults, FSDP over every device); the
    objective `reward.make_reward_loss` (each member on its own bootstrap resample), or the
    annotator-aware one of `reward.annotators`; the train state created sharded by
    `train.compile_init`; the step `train.make_train_step` jitted by
    `stages.common.jit_train_step`; batches placed on the mesh by
    `train.global_batch_from_local`; and scores from `reward.reward_model_scorer`.

    What stays its own, and why: the stage trains once, for a fixed number of steps, on a
    dataset prepared on disk, inside `stages.common.train_with_checkpoints` (run directory,
    metric writers, preemption). The loop instead trains a few steps at a time on labels held in
    memory that grow every round, continues from the last round's state, and checkpoints the
    state with its own loop state (labels, history, random state). So the learner tokenises and
    batches in-memory records itself (`examples`, `train`), and compiles its step and scorer once
    for fixed shapes, reused by every round, run and seed of a study.
    """

    def __init__(self, cfg: LearnerConfig, tokenizer, annotators: Sequence[str] = (), *,
                 mesh: str = RunConfig.mesh, rules: str = RunConfig.sharding):
        self.cfg, self.tok = cfg, tokenizer
        self.annotators = list(annotators)
        self.index = {a: i for i, a in enumerate(self.annotators)}
        self.mesh, self.rules = sharding.make_mesh(mesh), sharding.logical_rules(rules)
        check_batch_size("learner.batch_size", cfg.batch_size, self.mesh)
        # a preset's embedding fits the tokenizer; a checkpoint's is its own
        self._overrides = {} if cfg.model_dir else {"vocab_size": len(tokenizer)}
        self.config = (models.load_hf_config(cfg.model_dir) if cfg.model_dir
                       else models.preset(cfg.preset, **self._overrides))
        self.model = models.DecoderModel(self.config, heads=("reward",),
                                         num_reward_outputs=cfg.ensemble)
        self.scorer = reward.reward_model_scorer(self.config, num_outputs=cfg.ensemble)
        self.seq_len = cfg.max_prompt_len + cfg.max_response_len
        self._opt_cfg = train.OptimizerConfig(learning_rate=cfg.learning_rate, warmup_steps=10,
                                              total_steps=10**9, schedule="constant",
                                              weight_decay=0.0)
        if cfg.annotator_model == "none":
            self._loss = reward.make_reward_loss(
                self.model, reward.RewardLossConfig(label_flip_rate=cfg.label_flip_rate,
                                                    outlier_penalty=cfg.outlier_penalty),
                bootstrap=cfg.bootstrap)
        elif cfg.annotator_model == "personal":  # the heads are a basis, each user's weights
            self._loss = reward.make_personal_reward_loss(self.model)
        else:
            self._loss = make_annotator_reward_loss(
                self.model, use_bias=cfg.annotator_model == "temperature_bias")
        self.state = self.abstract_state = None
        self._step = None
        self._score = jax.jit(self.scorer.members_and_features)  # compiled once per shape

    def init(self, seed: int) -> None:
        """Fresh parameters (from `model_dir` when given) and optimiser state."""
        self.seed = seed
        key = jax.random.key(seed)
        _, _, params = models.load_or_init_model(
            self.cfg.model_dir, self.cfg.preset, self.mesh, self.rules, key, heads=("reward",),
            num_reward_outputs=self.cfg.ensemble, **self._overrides)
        if self.cfg.annotator_model != "none":
            annotators = (init_annotator_params(max(1, len(self.annotators)))
                          if self.cfg.annotator_model != "personal" else
                          {"users": reward.init_user_weights(max(1, len(self.annotators)),
                                                             self.cfg.ensemble,
                                                             jax.random.fold_in(key, 2))})
            annotators = sharding.shard_params(  # replicated
                annotators, {k: PartitionSpec(None) for k in annotators}, self.mesh,
                self.rules)
            params = ({"model": params, **annotators} if self.cfg.annotator_model == "personal"
                      else {"model": params, "annotators": annotators})
        tx = train.make_optimizer(self._opt_cfg, params)
        self.abstract_state, init_state = train.compile_init(
            lambda p: train.create_train_state(p, tx, jax.random.fold_in(key, 1),
                                               param_shardings=shardings_of(params)), params)
        if self._step is None:
            self._step = jit_train_step(train.make_train_step(self._loss, tx),
                                        self.abstract_state,
                                        sharding.batch_sharding(self.mesh, self.rules, 1))
        self.state = init_state()

    @property
    def reward_params(self):
        """The reward model's parameters (without the annotator model's)."""
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
        from the current parameters and optimiser state; a record's `weight` (default 1) scales
        its loss (0: left out). Returns the last step's metrics."""
        if not records or steps <= 0:
            return {}
        examples = self.examples(records)
        weights = np.asarray([float(r.get("weight", 1.0)) for r in records], np.float32)
        rng = np.random.default_rng(seed)
        seed_offset = (self.seed % 1000) * 1_000_000
        order = np.zeros(0, np.int64)
        metrics = {}
        with sharding.activation_sharding(self.mesh, self.rules):
            for _ in range(steps):  # shuffled epochs, batches of a fixed size across epochs
                while order.size < self.cfg.batch_size:
                    order = np.concatenate([order, rng.permutation(len(examples))])
                idx, order = order[:self.cfg.batch_size], order[self.cfg.batch_size:]
                # indices key each example's bootstrap weights; the seed offsets them per run
                batch = batch_examples([examples[i] for i in idx], indices=idx + seed_offset,
                                       prompt_len=self.cfg.max_prompt_len, num_responses=2,
                                       pad_id=self.tok.pad_token_id or 0)
                batch = batch.replace(weight=batch.weight * weights[idx])
                self.state, metrics = self._step(
                    self.state, train.global_batch_from_local(batch, self.mesh, self.rules))
        return {k: float(v) for k, v in jax.device_get(metrics).items()}

    def score_pairs(self, pairs: Sequence[tuple], chunk: int = 256) -> tuple:
        """(Δ [N, M] reward differences first − second per member, embeddings [N, D]: the
        difference of the two responses' last hidden states)."""
        exs = self.examples([pair_record(p, first_chosen=True) for p in pairs])
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        chunk = -(-chunk // shards) * shards  # rows split evenly over the batch axes
        deltas, embs = [], []
        pad_id, prompt_len = self.tok.pad_token_id or 0, self.cfg.max_prompt_len
        for start in range(0, len(exs), chunk):
            part = exs[start:start + chunk]
            seq = np.full((chunk, 2, self.seq_len), PAD, np.int32)
            for i, ex in enumerate(part):
                seq[i, :, :prompt_len] = ex["prompt"]
                seq[i, :, prompt_len:] = ex["responses"]
            seq[len(part):] = seq[0] if part else 0
            mask = (seq != PAD).astype(np.int32).reshape(chunk * 2, -1)
            tokens = np.where(seq == PAD, pad_id, seq).reshape(chunk * 2, -1)
            rows = train.global_batch_from_local(
                (tokens[:, :prompt_len], mask[:, :prompt_len], tokens[:, prompt_len:],
                 mask[:, prompt_len:]), self.mesh, self.rules)
            with sharding.activation_sharding(self.mesh, self.rules):
                r, e = jax.device_get(self._score(self.reward_params, *rows))
            r, e = r.reshape(chunk, 2, -1), e.reshape(chunk, 2, -1)
            deltas.append(r[:len(part), 0] - r[:len(part), 1])
            embs.append(e[:len(part), 0] - e[:len(part), 1])
        return np.concatenate(deltas), np.concatenate(embs)

    def accuracy(self, pairs: Sequence[tuple], gold: np.ndarray) -> float:
        """How often the ensemble's mean reward orders a pair as `gold` (Δ_gold ≠ 0) does."""
        delta, _ = self.score_pairs(pairs)
        keep = gold != 0
        return float(np.mean(np.sign(delta.mean(1)[keep]) == np.sign(gold[keep])))

    def user_weights(self) -> np.ndarray:
        """The users' learned weights over the basis heads [U, K'] (annotator_model
        "personal"), rows in the order of `annotators`."""
        if self.cfg.annotator_model != "personal":
            raise ValueError("user_weights: the learner has no users' weights (annotator_model="
                             f"{self.cfg.annotator_model!r}, expected 'personal')")
        return np.asarray(jax.device_get(self.state.params["users"]))

    def annotator_parameters(self) -> dict:
        """Learned {annotator: (τ, β)} when an annotator model is trained."""
        if self.cfg.annotator_model in ("none", "personal"):
            return {}
        ap = self.state.params["annotators"]
        tau, beta = jax.device_get((temperatures(ap), ap["bias"]))
        return {a: (float(tau[i]), float(beta[i])) for a, i in self.index.items()}
