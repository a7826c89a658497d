"""The reward-model audit's settings."""
from __future__ import annotations

import dataclasses
import importlib.util

from rlhf_jax import eval as rl_eval, train
from rlhf_jax.interpret.options import POOLINGS, PROJECTIONS


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """What to audit and how thoroughly. Paths left empty are read from `run_dir`."""

    run_dir: str = "runs/pipeline"  # a pipeline run directory (the main job's by default)
    reward_dir: str = ""  # a reward-model export; empty: <run_dir>/reward/export
    preference_file: str = ""  # its training comparisons; empty: from the reward stage config
    data_kind: str = "pairwise"  # with preference_file: pairwise or ranking
    out_dir: str = ""  # where the report goes; empty: <run_dir>/audit
    gold: str = ""  # the gold judge (eval.TEXT_TERMS); empty: the run's, else vader
    max_prompt_len: int = 0  # encoding lengths; 0: the reward stage's
    max_response_len: int = 0  # response tokens kept; 0: the reward stage's
    samples: int = 256  # responses for the atlas, length and perturbation diagnostics
    examples: int = 6  # comparisons explained token by token
    # integrated-gradients quadrature intervals to start from: doubled (up to 1024) until the
    # completeness gap is within 1% for every explained response
    ig_steps: int = 64
    layer: int = -1  # hidden state for concepts and the atlas (−1: the reward head's input)
    pooling: str = "last"  # last (the token the head reads) or mean (over the response)
    builtin_concepts: bool = True  # sentiment, profanity, length and a random control
    concepts: str = ""  # your concepts: name=file.jsonl,... (records with "response"/"text")
    concept_examples: int = 100  # examples per built-in concept
    random_sets: int = 30  # random counterexample sets (TCAV runs) for the significance test
    alpha: float = 0.05  # significance level, Bonferroni-corrected over the concepts
    projection: str = "pca"  # the atlas layout: pca, or umap (needs umap-learn)
    regions: int = 6  # atlas regions
    # appended by the "unrelated positive words" edit (keep it within max_response_len)
    positive_words: str = "wonderful lovely"
    repeat_times: int = 2  # how often the repeat edit appends the most rewarded word
    seed: int = 0  # seed of the sampled texts, probes and random concepts

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise train.ConfigError(f"pooling={self.pooling!r}: expected one of {POOLINGS}")
        if self.projection not in PROJECTIONS:
            raise train.ConfigError(f"projection={self.projection!r}: expected one of "
                                    f"{PROJECTIONS}")
        if self.gold and self.gold not in rl_eval.TEXT_TERMS:
            raise train.ConfigError(f"gold={self.gold!r}: expected one of "
                                    f"{sorted(rl_eval.TEXT_TERMS)}")
        least = {"samples": max(10, self.regions), "ig_steps": 1, "random_sets": 3,
                 "concept_examples": 8, "regions": 1, "examples": 0, "repeat_times": 1}
        for name, low in least.items():
            if getattr(self, name) < low:
                raise train.ConfigError(f"{name}={getattr(self, name)}: expected >= {low}")
        if self.data_kind not in ("pairwise", "ranking"):
            raise train.ConfigError(f"data_kind={self.data_kind!r}: expected 'pairwise' or "
                                    "'ranking' (the audit reads comparisons)")
        if self.projection == "umap":
            if importlib.util.find_spec("umap") is None:
                raise train.ConfigError("projection='umap' needs the umap-learn package "
                                        "(`pip install umap-learn`); or use pca")
        if not 0 < self.alpha < 1:
            raise train.ConfigError(f"alpha={self.alpha}: expected 0 < alpha < 1")
