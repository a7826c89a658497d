"""PPO machinery: advantages (GAE, whitening, group baselines), KL penalties and controllers,
and a Lagrangian cost constraint."""
from rlhf_jax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "config": ("ConstraintConfig", "KLConfig", "PPOConfig", "RolloutConfig",),
    "constraint": ("LagrangeState", "lagrange_init", "lagrange_update",),
    "advantages": (
        "gae", "grpo_advantages", "masked_mean", "masked_var", "rloo_advantages", "whiten",
    ),
    "kl": (
        "ESTIMATORS", "KLControllerState", "adaptive_kl_init", "adaptive_kl_update",
        "fixed_kl_init", "fixed_kl_update", "kl_estimate", "token_rewards",
    ),
    "rollout": (
        "RewardTerm", "Rollout", "finish_rollout", "make_rollout",
        "rollout_metrics", "score_responses", "sequence_values", "text_reward_term",
    ),
    "update": ("policy_objective", "ppo_update",),
    "trainer": ("ZipBatches", "kl_controller", "make_ppo_step",),
})
