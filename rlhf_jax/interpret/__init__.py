"""Understanding and auditing reward models: token attributions, concept activation vectors,
activation atlases, reward-hacking diagnostics, backdoor-trigger scans and the tamper-evident
decision log. Names load on
first use (so `python -m rlhf_jax.interpret.decisions` does not find its module imported by the
package)."""
from rlhf_jax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "attribution": (
        "METHODS", "RULES", "Attribution", "LogProbTarget", "RewardTarget", "attribute",
        "gradient_x_input", "integrated_gradients", "occlusion", "quadrature",
    ),
    "hash_chain": ("VerifyResult", "verify_log",),
    "decisions": (
        "DecisionLog", "DecisionLogError", "input_hash", "model_hash", "record_override",
        "text_hash",
    ),
    "logged_scorer": ("LoggedScorer",),
    "triggers": ("candidate_words", "scan_triggers",),
})
