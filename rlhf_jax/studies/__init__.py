"""Experiments composed of stages: the method comparison, the active-learning loop, iterative
DPO, the annotation-budget studies, RLAIF beside human labels, and the reward-model audit. The
configs live in `studies.configs` (importable without JAX). A study's module is not named as its
function (`label_efficiency_study` holds `label_efficiency`): importing the module would
otherwise replace the function in the package."""
from rlhf_jax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "configs.active": ("ActiveConfig",),
    "configs.budgets": ("AnnotatorVarianceConfig", "HybridConfig", "LabelEfficiencyConfig",),
    "configs.learner": ("LearnerConfig",),
    "configs.rlaif": ("RLAIFConfig",),
    "configs.personal": ("PersonalRewardConfig",),
    "configs.robustness": ("RobustnessConfig",),
    "active": ("ActiveResult", "active_learning",),
    "annotator_variance_study": ("annotator_variance",),
    "configs.audit": ("AuditConfig",),
    "configs.iterative": ("IterativeDPOConfig",),
    "iterative": ("IterativeResult", "iterative_dpo",),
    "audit": ("audit_reward",),
    "compare_setup": ("CompareConfig",),
    "compare": ("compare_methods",),
    "hybrid": ("hybrid_supervision",),
    "label_efficiency_study": ("label_efficiency",),
    "learner": ("Learner",),
    "pairs": ("SimulatedAnnotators",),
    "rlaif": ("run_rlaif",),
    "personal": ("personal_reward",),
    "robustness_study": ("robustness",),
    "users": ("SimulatedUsers",),
})
