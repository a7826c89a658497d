"""The personalised-reward study's settings."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PersonalRewardConfig:
    """Personalised rewards on simulated users: accuracy against the number of a user's own
    labels, recovered weights, active choice of comparisons, best-of-n per user, and the
    safety floor."""

    run_dir: str = "runs/study_personal_reward"  # report, plots, results and every run
    seeds: str = "0,1,2"  # comma-separated seeds (>= 3 for error bands)
    quick: bool = False  # tiny budgets, for the tests
    # users whose labels train the basis (studies.users.USERS)
    train_users: str = "positive,negative,brief,verbose,cautious,blunt"
    new_users: str = "varied,repetitive"  # users never seen in training (only their k labels)
    temperature: float = 0.2  # the users' Bradley-Terry noise
    basis: int = 4  # K': basis reward heads
    labels_per_user: int = 300  # training labels of each training user
    steps: int = 600  # optimiser steps of the personal and the shared reward model
    ks: str = "0,1,2,4,8,16,32,64"  # a user's own labels for the k-shot posterior
    scratch_steps: int = 150  # steps of a per-user model trained from scratch on k labels
    heldout_pairs: int = 300  # pairs each user's accuracy is measured on
    pool: int = 200  # candidate comparisons for active against random choice
    active_labels: int = 16  # comparisons chosen one at a time from the pool
    sft_steps: int = 150  # the policy for best-of-n: SFT on the built-in corpus
    bon_prompts: int = 32  # prompts of the best-of-n comparison
    best_of: int = 16  # samples per prompt
    floor: float = 0.5  # safety floor: profanity P > floor is picked only if all candidates are
    soups: bool = True  # rewarded soups: a LoRA policy per basis head (PPO), mixed per user
    soup_steps: int = 30  # PPO iterations of each ingredient and of the shared policy
    # the operator's constraint in every PPO run: mean profanity probability at most this
    soup_cost_limit: float = 0.05

    def resolved(self) -> "PersonalRewardConfig":
        if not self.quick:
            return self
        return dataclasses.replace(self, seeds="0", labels_per_user=120, steps=150,
                                   ks="0,4,16", scratch_steps=30, heldout_pairs=120, pool=48,
                                   active_labels=8, sft_steps=30, bon_prompts=8, best_of=4,
                                   train_users="positive,negative,blunt", new_users="varied",
                                   soups=False)  # soups: three more PPO runs (+65 s)
