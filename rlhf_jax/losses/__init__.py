"""Pure objective functions: language modelling, preference and policy-gradient losses."""
from rlhf_jax.losses.lm import next_token_nll_sum, next_token_targets
from rlhf_jax.losses.preference import (bradley_terry_loss, centering_penalty, hybrid_loss_sum,
                                        plackett_luce_loss,
                                        scalar_regression_loss)
from rlhf_jax.losses.policy import clipped_value_loss, ppo_policy_loss, token_entropy
