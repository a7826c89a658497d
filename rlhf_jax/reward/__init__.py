"""Reward models: the training objective, evaluation, normalisation, ensembles, early stopping,
acquisition functions for active learning and annotator models."""
from rlhf_jax.reward.evaluate import (comparison_metrics, ensemble_statistics,
                                      expected_calibration_error, normalised_head, write_summary)
from rlhf_jax.reward.objective import (RewardLossConfig, batch_rewards, bootstrap_weights,
                                       make_reward_loss, reward_loss_terms)
from rlhf_jax.reward.export import load_reward_model, save_reward_model
from rlhf_jax.reward.pipeline import (evaluate_comparisons, normalise_reward_params,
                                      score_source)
from rlhf_jax.reward.scoring import critic_from_reward_model, reward_model_scorer
from rlhf_jax.reward import acquisition, annotators
from rlhf_jax.reward.acquisition import ACQUISITIONS, acquisition_scores
from rlhf_jax.reward.annotators import dawid_skene, make_annotator_reward_loss

# the decision log (`reward.decisions`), imported on first use so that `python -m
# rlhf_jax.reward.decisions` does not find the module already imported by its package
_DECISIONS = ("DecisionLog", "DecisionLogError", "LoggedScorer", "VerifyResult", "input_hash",
              "model_hash", "record_override", "text_hash", "verify_log")


def __getattr__(name):
    if name == "decisions" or name in _DECISIONS:
        import importlib
        module = importlib.import_module("rlhf_jax.reward.decisions")
        return module if name == "decisions" else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
