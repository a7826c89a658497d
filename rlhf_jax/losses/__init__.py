"""Pure objective functions: language modelling, preference and policy-gradient losses."""
from rlhf_jax.losses.lm import next_token_nll_sum
