"""Metrics and scorers: packaged text judges, policy evaluation, the run report."""
from rlhf_jax.eval.policy import evaluate_policy
from rlhf_jax.eval.report import write_report
from rlhf_jax.eval.scorers import TEXT_TERMS, repetition_fraction, vader_compound, word_count
