"""The PPO stage's reward-model refresh settings (`PPOStageConfig.refresh`)."""
from __future__ import annotations

import dataclasses

from rlhf_jax import eval as rl_eval

LABEL_SOURCES = ("judge", "simulated")


@dataclasses.dataclass(frozen=True)
class RewardRefreshConfig:
    """Refreshing the reward model on the policy's own samples during PPO (`stages.refresh`).

    After every `every`-th PPO iteration the current policy answers `prompts` prompts twice,
    the pairs are labelled, the reward model's accuracy on them is logged before it learns from
    them, and it trains `steps` Adam steps on the newest `buffer` labelled pairs; PPO goes on
    scoring with the refreshed model. `labels`: "judge" (the text scorer `judge` of
    `eval.TEXT_TERMS` prefers the higher score; equal scores are ties, left out) or "simulated"
    (a Bradley–Terry annotator around that judge prefers a over b with probability
    σ((g_a − g_b)/`temperature`), as the main job's simulated annotators do). The last
    `heldout_fraction` of each refresh's pairs are not trained on: they measure the refreshed
    model. `steps` 0 only measures: the fresh samples are labelled and the loaded reward
    model's accuracy on them logged at every refresh, and PPO runs exactly as without refresh.
    With `normalise` the refreshed model's head is set to give mean 0 and std 1 on the
    reference policy's answers to `prompts` prompts (a set fixed for the run), as the reward
    stage normalises it (Ziegler et al. 2019, §2.2): the reward's scale, against which the KL
    coefficient β is set, stays put instead of growing with every refresh.
    """

    every: int = 0  # refresh after every N-th PPO iteration; 0: off
    labels: str = "judge"  # who labels the fresh pairs: judge | simulated
    judge: str = "vader"  # the text scorer behind the labels (the main job's annotators' judge)
    temperature: float = 0.3  # labels=simulated: the annotator's Bradley-Terry temperature
    prompts: int = 32  # prompts per refresh, each answered twice by the current policy
    # reward-model optimiser steps per refresh (a fresh Adam each); 0: measure only, no training
    steps: int = 20
    batch_size: int = 32  # labelled pairs per reward-model step, drawn from the buffer
    learning_rate: float = 1e-4  # the reward model's Adam learning rate (constant)
    buffer: int = 512  # labelled pairs kept for training (the newest)
    heldout_fraction: float = 0.25  # share of each refresh's pairs kept out of training
    # after each refresh: mean 0 / std 1 on the reference policy's answers (as the reward stage)
    normalise: bool = True

    def __post_init__(self):
        positive = {"refresh.prompts": self.prompts, "refresh.batch_size": self.batch_size,
                    "refresh.buffer": self.buffer}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name}={value}: expected >= 1")
        if self.every < 0:
            raise ValueError(f"refresh.every={self.every}: expected >= 0 (0: no refresh)")
        if self.steps < 0:
            raise ValueError(f"refresh.steps={self.steps}: expected >= 0 (0: measure only)")
        if self.labels not in LABEL_SOURCES:
            raise ValueError(f"refresh.labels={self.labels!r}: expected one of "
                             f"{', '.join(LABEL_SOURCES)}")
        if self.judge not in rl_eval.TEXT_TERMS:
            raise ValueError(f"refresh.judge={self.judge!r}: expected one of "
                             f"{sorted(rl_eval.TEXT_TERMS)}")
        if self.temperature <= 0:
            raise ValueError(f"refresh.temperature={self.temperature}: expected > 0")
        if self.learning_rate <= 0:
            raise ValueError(f"refresh.learning_rate={self.learning_rate}: expected > 0")
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"refresh.heldout_fraction={self.heldout_fraction}: expected "
                             "0 <= fraction < 1")
        if self.every and self.heldout_fraction and not self.heldout:
            raise ValueError(f"refresh.heldout_fraction={self.heldout_fraction} of "
                             f"refresh.prompts={self.prompts} pairs holds none out; raise one "
                             "of them (or set the fraction to 0)")
        if self.every and self.heldout >= self.prompts:
            raise ValueError(f"refresh.heldout_fraction={self.heldout_fraction} of "
                             f"refresh.prompts={self.prompts} pairs leaves none to train on")

    @property
    def enabled(self) -> bool:
        """Whether the reward model is refreshed at all."""
        return self.every > 0

    @property
    def heldout(self) -> int:
        """Pairs of each refresh held out of training: round(heldout_fraction × prompts)."""
        return int(round(self.heldout_fraction * self.prompts))
