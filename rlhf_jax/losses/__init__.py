"""Pure objective functions: language modelling, preference and policy-gradient losses."""
from rlhf_jax.losses.custom import (CustomLossError, loss_name, resolve_loss, sum_form,
                                    with_context)
from rlhf_jax.losses.offline import (awr_loss, dpo_loss, filtered_bc_loss, ipo_loss, kto_loss,
                                     kto_reference_point, orpo_loss, simpo_loss)
from rlhf_jax.losses.lm import model_nll_sum, next_token_nll_sum, next_token_targets
from rlhf_jax.losses.preference import (bradley_terry_loss, centering_penalty, hybrid_loss_sum,
                                        plackett_luce_loss,
                                        scalar_regression_loss)
from rlhf_jax.losses.policy import clipped_value_loss, ppo_policy_loss
from rlhf_jax.models.logprobs import token_entropy
