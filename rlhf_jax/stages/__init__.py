"""The run shell as library functions: one function per stage, taking frozen config dataclasses
and returning a small result; the run-directory layout; the end-to-end pipeline."""
from rlhf_jax.stages.cli import USER_ERRORS, run_script
from rlhf_jax.stages.common import RunConfig, StageResult
from rlhf_jax.stages.layout import (ConfigMismatchError, PipelineLayout, RunLayout,
                                    check_run_config, record_run_config)
from rlhf_jax.stages.compare import CompareConfig, compare_methods
from rlhf_jax.stages.offline import OfflineConfig, OfflineData, train_offline
from rlhf_jax.stages.pipeline import PipelineConfig, PipelineResult, run_pipeline
from rlhf_jax.stages.ppo import (PPOStageConfig, PromptData, PtxData, load_ppo_models,
                                 resolve_sampling, stop_token_ids, train_ppo)
from rlhf_jax.stages.reward import EarlyStopping, RewardConfig, RewardData, train_reward_model
from rlhf_jax.stages.sft import SFTConfig, SFTData, train_sft
from rlhf_jax.stages.active import (ActiveConfig, ActiveResult, Learner, LearnerConfig,
                                    SimulatedAnnotators, active_learning)
from rlhf_jax.stages.studies import (AnnotatorVarianceConfig, HybridConfig,
                                     LabelEfficiencyConfig, annotator_variance,
                                     hybrid_supervision, label_efficiency)
from rlhf_jax.stages.rlaif import (CritiqueRevisionConfig, RLAIFConfig, run_rlaif,
                                   train_sl_cai)
from rlhf_jax.stages.audit import AuditConfig, audit_reward
