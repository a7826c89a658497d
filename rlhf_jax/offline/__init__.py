"""Offline preference optimisation and offline RL from logged feedback: the objectives over
preference batches (DPO and relatives, KTO, AWR, filtered BC) and the reference-policy cache;
and online preference optimisation, the same pairwise losses on the policy's own samples ranked
by a judge."""
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
    "online": (
        "judged_pair_stats", "judged_ranks", "make_online_step", "online_preference_batch",
    ),
    "inputs": (
        "OfflineInputs", "cached_reference", "compute_reference_cache", "epoch_batches",
        "partner_rows",
    ),
})
