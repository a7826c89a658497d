"""Experiments composed of stages: the method comparison, the active-learning loop, the
annotation-budget studies, RLAIF beside human labels, and the reward-model audit."""
from rlhf_jax.studies.active import ActiveConfig, ActiveResult, active_learning
from rlhf_jax.studies.annotator_variance import AnnotatorVarianceConfig, annotator_variance
from rlhf_jax.studies.audit import AuditConfig, audit_reward
from rlhf_jax.studies.compare import CompareConfig, compare_methods
from rlhf_jax.studies.hybrid import HybridConfig, hybrid_supervision
from rlhf_jax.studies.label_efficiency import LabelEfficiencyConfig, label_efficiency
from rlhf_jax.studies.learner import Learner, LearnerConfig
from rlhf_jax.studies.pairs import SimulatedAnnotators
from rlhf_jax.studies.rlaif import RLAIFConfig, run_rlaif
