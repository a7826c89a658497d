"""The active-learning loop's settings."""
from __future__ import annotations

import dataclasses

from rlhf_jax import train
from rlhf_jax.reward.config import ACQUISITIONS
from rlhf_jax.studies.configs.learner import LearnerConfig
from rlhf_jax.studies.pairs import SimulatedAnnotators


LABEL_SOURCES = ("simulated", "file", "app")
BATCH_MODES = ("top", "per_prompt", "diverse")


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
        if self.acquisition not in ACQUISITIONS:
            raise ValueError(f"acquisition={self.acquisition!r}: expected one of "
                             f"{ACQUISITIONS}")
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
        if self.learner.annotator_model == "personal":
            raise ValueError("learner.annotator_model='personal': the active-learning loop "
                             "reads the heads as an ensemble (their mean, their disagreement); "
                             "a personal basis is not one (see experiments/personal_reward.py)")
        if self.learner.annotator_model != "none" and self.labels != "simulated":
            raise ValueError("learner.annotator_model needs labels=simulated: with a file or "
                             "the app the annotators are not known when the model is built")
        if self.labels_per_round > self.pool_size:
            raise ValueError(f"labels_per_round={self.labels_per_round} exceeds pool_size="
                             f"{self.pool_size}")

    def annotators(self) -> SimulatedAnnotators:
        """The simulated annotators of `annotator_temperatures` and `annotator_biases`."""
        temps = tuple(float(t) for t in self.annotator_temperatures.split(",") if t.strip())
        biases = tuple(float(b) for b in self.annotator_biases.split(",") if b.strip())
        if biases and len(biases) != len(temps):
            raise train.ConfigError(f"annotator_biases has {len(biases)} values for "
                                    f"{len(temps)} annotators")
        return SimulatedAnnotators(temps, biases)
