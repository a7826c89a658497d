"""Metrics and scorers: packaged text judges, policy evaluation, the run report."""
from rlhf_jax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "metrics": ("distinct_n", "distinct_n_bootstrap", "mean_se", "win_rate",),
    "policy": ("best_of_n_kl", "evaluate_best_of_n", "evaluate_policy",),
    "report": ("write_report",),
    "scorers": (
        "TEXT_TERMS", "profanity_probabilities", "profanity_probability", "profanity_rate",
        "repetition_fraction", "vader_compound", "vader_diverse", "word_count",
    ),
})
