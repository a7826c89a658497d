"""Reward models: the training objective, evaluation, normalisation, ensembles, early stopping,
acquisition functions for active learning, annotator models, rewards personalised to each
user, screening of poisoned labels, and refreshing on on-policy samples."""
from rlhf_jax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "evaluate": (
        "comparison_metrics", "ensemble_statistics", "expected_calibration_error",
        "normalised_head", "write_summary",
    ),
    "config": ("ACQUISITIONS", "RewardLossConfig", "parse_objectives",),
    "objective": (
        "batch_rewards", "bootstrap_weights", "make_reward_loss",
        "reward_loss_terms",
    ),
    "export": ("load_reward_model", "save_reward_model",),
    "pipeline": ("evaluate_comparisons", "normalise_reward_params", "score_source",),
    "scoring": ("critic_from_reward_model", "reward_model_scorer",),
    "acquisition": ("acquisition_scores",),
    "annotators": ("dawid_skene", "make_annotator_reward_loss",),
    "personal": ("expected_information", "init_user_weights", "laplace_posterior",
                 "make_personal_reward_loss", "population_prior", "predictive_probability",),
    "personal_model": ("PersonalRewardModel",),
    "objectives": ("evaluate_objectives", "make_objective_reward_loss", "objective_weights",),
    "refresh": ("buffer_add", "buffer_batch", "buffer_init", "chosen_first", "pair_accuracy",
                "pair_batch", "pair_labels", "renormalised_head",),
    "screening": ("POOLED", "annotator_screening", "example_losses", "example_screening",
                  "fit_sharpness",),
})
