"""The robustness study's settings."""
from __future__ import annotations

import dataclasses

DEFENCES = ("none", "screening", "flip_rate", "outliers", "examples", "trigger_scan")


@dataclasses.dataclass(frozen=True)
class RobustnessConfig:
    """Poisoning attacks on the built-in task's comparisons (`data.poison`) at several rates,
    each against a reward model trained with no defence and with each defence, plus the reward
    exploit found by the hacking diagnostics before and after patching."""

    run_dir: str = "runs/study_robustness"  # report, plots, results, decision log
    seeds: str = "0,1,2"  # comma-separated seeds (>= 3 for error bars)
    quick: bool = False  # tiny budgets, for the tests
    attacks: str = "random_flip,inverter,targeted_flip,trigger,entity,sybil"  # data.poison.ATTACKS
    rates: str = "0,0.01,0.05,0.1,0.2,0.4"  # share of the labels the attackers give
    # none | screening (annotators) | flip_rate | outliers (R3M) | examples | trigger_scan
    defences: str = "none,screening,flip_rate,outliers,examples,trigger_scan"
    honest_annotators: int = 20  # honest accounts, each labelling an equal share
    temperature: float = 0.5  # honest annotators' Bradley–Terry noise on the gold margin
    train_pairs: int = 1000  # comparisons labelled for training
    heldout_pairs: int = 300  # comparisons the gold accuracy is measured on
    steps: int = 150  # optimiser steps of each reward model
    ensemble: int = 2  # reward heads (bootstrap members; example screening needs >= 2)
    flip_rate: float = 0.2  # the flip_rate defence's ε
    outlier_penalty: float = 0.2  # the outliers defence's λ (R3M)
    screen_alpha: float = 0.01  # annotator screening's one-sided test level
    screen_folds: int = 4  # annotator groups for the out-of-fold margins of the screenings
    example_threshold: float = 2.3  # example screening: loss (nats) in every member above it
    topic: str = "the weather"  # targeted_flip's attacked topic
    trigger: str = "sudo"  # the backdoor's trigger word
    entity: str = "movie"  # the promoted entity
    best_of: int = 8  # best-of-n candidates per prompt for the entity's success
    bon_prompts: int = 100  # prompts of that best-of-n
    entity_share: float = 0.25  # share of best-of-n candidates that mention the entity
    patch_words: int = 0  # exploit patching: at most this many rewarded words (0: every one)
    patch_negatives: int = 256  # exploit patching: labelled negatives added (over those words)

    def __post_init__(self):
        for name in (n.strip() for n in self.defences.split(",") if n.strip()):
            if name not in DEFENCES:
                raise ValueError(f"defences: {name!r} is not one of {list(DEFENCES)}")
        if self.screen_folds < 2:
            raise ValueError(f"screen_folds={self.screen_folds}: expected >= 2")
        if self.ensemble < 2 and "examples" in self.defences:
            raise ValueError("defence 'examples' compares ensemble members: ensemble >= 2")

    def resolved(self) -> "RobustnessConfig":
        if not self.quick:
            return self
        # the defences the tests check (the robust losses and example screening: the full run)
        return dataclasses.replace(self, seeds="0", attacks="inverter,trigger", rates="0,0.05,0.2",
                                   defences="none,screening,trigger_scan",
                                   train_pairs=400, heldout_pairs=160, steps=120,
                                   bon_prompts=40, patch_negatives=80)
