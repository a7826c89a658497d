"""The run shell as library functions: one function per stage, taking frozen config dataclasses
and returning a small result; the run-directory layout; the end-to-end pipeline."""
from rlhf_jax.stages.cli import USER_ERRORS, run_script
from rlhf_jax.stages.common import RunConfig, StageResult
from rlhf_jax.stages.evaluate import EvalConfig, evaluate_prompts
from rlhf_jax.stages.layout import (ConfigMismatchError, PipelineLayout, RunLayout,
                                    check_run_config, record_run_config)
from rlhf_jax.stages.offline import OfflineConfig, OfflineData, train_offline
from rlhf_jax.stages.pipeline import PipelineConfig, PipelineResult, run_pipeline
from rlhf_jax.stages.ppo import (PPOStageConfig, PromptData, PtxData, load_ppo_models,
                                 resolve_sampling, stop_token_ids, train_ppo)
from rlhf_jax.stages.reward import EarlyStopping, RewardConfig, RewardData, train_reward_model
from rlhf_jax.stages.sft import SFTConfig, SFTData, train_sft
from rlhf_jax.stages.sl_cai import CritiqueRevisionConfig, train_sl_cai
