"""The active-learning learner's settings."""
from __future__ import annotations

import dataclasses


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
    # none | temperature | temperature_bias (reward.annotators) | personal (the heads are a
    # basis φ and each annotator a user with weights w_u: reward.personal)
    annotator_model: str = "none"
    rating_range: tuple = (1.0, 7.0)  # Likert scale of rating records
    # robust comparison losses (reward.RewardLossConfig; annotator_model "none" only):
    label_flip_rate: float = 0.0  # labels flipped with this probability (0: off)
    outlier_penalty: float = 0.0  # R3M's weight λ of per-example outlier terms (0: off)

    def __post_init__(self):
        if self.ensemble < 1 or self.batch_size < 1:
            raise ValueError("ensemble and batch_size must be >= 1")
        if self.annotator_model not in ("none", "temperature", "temperature_bias", "personal"):
            raise ValueError(f"annotator_model={self.annotator_model!r}: expected none, "
                             "temperature, temperature_bias or personal")
        if (self.label_flip_rate or self.outlier_penalty) and self.annotator_model != "none":
            raise ValueError("label_flip_rate and outlier_penalty are robust forms of the "
                             "plain loss: annotator_model must be 'none' with them")
