"""Pure objective functions: language modelling, preference and policy-gradient losses."""
from rlhf_jax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "custom": ("CustomLossError", "loss_name", "resolve_loss", "sum_form", "with_context",),
    "offline": (
        "awr_loss", "dpo_loss", "filtered_bc_loss", "ipo_loss", "kto_loss", "kto_reference_point",
        "orpo_loss", "simpo_loss",
    ),
    "lm": ("model_nll_sum", "next_token_nll_sum", "next_token_targets",),
    "preference": (
        "bradley_terry_loss", "centering_penalty", "flip_likelihood_loss", "hybrid_loss_sum",
        "outlier_loss", "outlier_terms", "plackett_luce_loss", "scalar_regression_loss",
    ),
    "policy": ("clipped_value_loss", "ppo_policy_loss",),
    "kl": ("ESTIMATORS", "kl_estimate",),
    "rlhf_jax.models.logprobs": ("token_entropy",),
})
