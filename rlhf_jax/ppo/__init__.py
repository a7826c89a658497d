"""PPO machinery: advantages (GAE, whitening, group baselines), KL penalties and controllers."""
from rlhf_jax.ppo.advantages import (gae, grpo_advantages, masked_mean, masked_var,
                                     rloo_advantages, whiten)
from rlhf_jax.ppo.kl import (ESTIMATORS, KLControllerState, adaptive_kl_init,
                             adaptive_kl_update, fixed_kl_init, fixed_kl_update, kl_estimate,
                             token_rewards)
from rlhf_jax.ppo.rollout import (RewardTerm, Rollout, RolloutConfig, finish_rollout,
                                  make_rollout, rollout_metrics, score_responses, sequence_values,
                                  text_reward_term)
from rlhf_jax.ppo.update import PPOConfig, policy_objective, ppo_update
from rlhf_jax.ppo.trainer import KLConfig, ZipBatches, kl_controller, make_ppo_step
