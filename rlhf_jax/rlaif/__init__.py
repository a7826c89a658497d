"""AI feedback: a written constitution, AI judges (a language model reading answer log-probs,
packaged classifiers, a constitution of principles) and their labels."""
from rlhf_jax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "constitution": (
        "Constitution", "ConstitutionError", "Principle", "load_constitution",
        "parse_constitution",
    ),
    "judges": (
        "CLASSIFIERS", "ClassifierJudge", "ConstitutionJudge", "Judgement", "LMJudge",
        "profanity_probabilities", "profanity_probability", "profanity_rate",
    ),
    "labels": ("DEFAULT_CONSTITUTION", "ai_label", "constitution_judge", "round_robin_scores",),
    "critique": ("critique_revision",),
})
