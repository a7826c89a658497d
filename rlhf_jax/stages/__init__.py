"""The run shell as library functions: one function per stage, taking frozen config dataclasses
and returning a small result; the run-directory layout; the end-to-end pipeline. The configs
live in `stages.configs` (importable without JAX), the stages in their own modules."""
from rlhf_jax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "cli": ("USER_ERRORS", "run_script",),
    "configs.run": ("RunConfig", "StageResult",),
    "configs.sft": ("SFTConfig", "SFTData",),
    "configs.reward": ("EarlyStopping", "RewardConfig", "RewardData",),
    "configs.offline": ("OfflineConfig", "OfflineData",),
    "configs.online": ("OnlineDPOConfig",),
    "configs.ppo": ("PPOStageConfig", "PromptData", "PtxData",),
    "configs.refresh": ("RewardRefreshConfig",),
    "configs.evaluate": ("EvalConfig",),
    "configs.pipeline": ("PipelineConfig",),
    "configs.sl_cai": ("CritiqueRevisionConfig",),
    "evaluate": ("evaluate_prompts",),
    "layout": (
        "ConfigMismatchError", "PipelineLayout", "RunLayout", "check_run_config",
        "record_run_config",
    ),
    "offline": ("train_offline",),
    "online": ("online_update", "train_online_dpo",),
    "pipeline": ("PipelineResult", "run_pipeline",),
    "ppo": ("load_ppo_models", "resolve_sampling", "stop_token_ids", "train_ppo",),
    "refresh": ("RewardRefresher", "refresh_update",),
    "reward": ("train_reward_model",),
    "sft": ("train_sft",),
    "sl_cai": ("train_sl_cai",),
})
