"""Metrics and scorers: packaged text judges, policy evaluation, the run report."""
from rlhf_jax.eval.metrics import distinct_n, distinct_n_bootstrap, mean_se, win_rate
from rlhf_jax.eval.policy import best_of_n_kl, evaluate_best_of_n, evaluate_policy
from rlhf_jax.eval.report import write_report
from rlhf_jax.eval.scorers import (TEXT_TERMS, profanity_probabilities, profanity_probability,
                                   profanity_rate, repetition_fraction, vader_compound,
                                   vader_diverse, word_count)
