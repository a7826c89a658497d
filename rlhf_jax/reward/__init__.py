"""Reward models: the training objective, evaluation, normalisation, ensembles, early stopping."""
from rlhf_jax.reward.evaluate import (EarlyStoppingState, comparison_metrics,
                                      early_stopping_init, early_stopping_update,
                                      ensemble_statistics, expected_calibration_error,
                                      normalised_head, write_summary)
from rlhf_jax.reward.objective import (RewardLossConfig, batch_rewards, make_reward_loss,
                                       reward_loss_terms)
