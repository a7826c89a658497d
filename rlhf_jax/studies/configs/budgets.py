"""The annotation-budget studies' settings: label efficiency, hybrid supervision, annotator
variance."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class LabelEfficiencyConfig:
    """Held-out accuracy against the number of labels for each acquisition function."""

    run_dir: str = "runs/study_label_efficiency"  # report, plots, results and every run
    seeds: str = "0,1,2"  # comma-separated seeds (>= 3 for error bands)
    arms: str = "random,entropy,disagreement,bald,bald + diverse"  # acquisition arms compared
    quick: bool = False  # tiny budgets, for the tests
    rounds: int = 10  # acquisition rounds
    initial_labels: int = 40  # random labels first
    labels_per_round: int = 40  # labels acquired per round
    pool_size: int = 800  # candidates per round
    steps_per_round: int = 60  # warm-start steps per round
    initial_steps: int = 150  # steps on the initial labels
    heldout_pairs: int = 1000  # gold-judged evaluation pairs
    annotator_temperatures: str = "0.15,0.3,0.6"  # simulated annotators

    def resolved(self) -> "LabelEfficiencyConfig":
        if not self.quick:
            return self
        return dataclasses.replace(self, rounds=2, initial_labels=16, labels_per_round=16,
                                   pool_size=96, steps_per_round=10, initial_steps=20,
                                   heldout_pairs=200)


@dataclasses.dataclass(frozen=True)
class HybridConfig:
    """Equal annotation budgets spent on comparisons, on ratings, or half on each."""

    run_dir: str = "runs/study_hybrid"  # report, plots, results and every run
    seeds: str = "0,1,2"  # comma-separated seeds (>= 3 for error bands)
    quick: bool = False  # tiny budgets, for the tests
    budgets: str = "20,40,80,160,320"  # annotation budgets, in units of one comparison's cost
    comparison_cost: float = 1.0  # cost of one pairwise comparison
    rating_cost: float = 0.5  # cost of one Likert rating of one response
    rating_noise: float = 1.0  # std of the simulated raters' noise, in Likert points
    steps: int = 200  # optimiser steps per training run
    target: float = 0.0  # accuracy to reach (0: 95% of pairwise-only's best mean)
    heldout_pairs: int = 1000  # gold-judged evaluation pairs
    annotator_temperatures: str = "0.15,0.3,0.6"  # simulated annotators (comparisons)

    def resolved(self) -> "HybridConfig":
        if not self.quick:
            return self
        return dataclasses.replace(self, budgets="8,16", steps=20, heldout_pairs=200)


@dataclasses.dataclass(frozen=True)
class AnnotatorVarianceConfig:
    """More labels per item or more items, at several annotator noise levels; and annotator
    models on a mixed-reliability crowd."""

    run_dir: str = "runs/study_annotators"  # report, plots, results and every run
    seeds: str = "0,1,2"  # comma-separated seeds (>= 3 for error bands)
    quick: bool = False  # tiny budgets, for the tests
    total_labels: int = 450  # labels bought in every condition
    labels_per_item: str = "1,3,5"  # redundancy levels compared
    noise: str = "0.3,1.0,3.0"  # annotator temperatures compared (all annotators alike)
    crowd: str = "0.1,0.3,0.9,2.7,8.1"  # mixed crowd for the annotator-model comparison
    crowd_items: int = 150  # items of the crowd comparison, each labelled by 3 of the crowd
    steps: int = 200  # optimiser steps per training run
    heldout_pairs: int = 1000  # gold-judged evaluation pairs

    def resolved(self) -> "AnnotatorVarianceConfig":
        if not self.quick:
            return self
        return dataclasses.replace(self, total_labels=30, labels_per_item="1,3", noise="0.3,3.0",
                                   crowd_items=30, steps=20, heldout_pairs=200)
