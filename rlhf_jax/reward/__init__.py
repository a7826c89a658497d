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

