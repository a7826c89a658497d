"""Offline preference optimisation and offline RL from logged feedback: the objectives over
preference batches (DPO and relatives, KTO, AWR, filtered BC) and the reference-policy cache."""
from rlhf_jax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "config": (
        "METHOD_KINDS", "METHODS", "PAIRWISE", "USES_REFERENCE", "OfflineLossConfig",
        "check_method_kind",
    ),
    "objective": (
        "logged_rewards", "make_offline_loss", "offline_loss_sums",
        "reference_logprobs", "sequence_logprobs",
    ),
    "inputs": (
        "OfflineInputs", "cached_reference", "compute_reference_cache", "epoch_batches",
        "partner_rows",
    ),
})
