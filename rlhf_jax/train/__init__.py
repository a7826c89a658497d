"""Train state, optimiser factory, the training loop (the impure shell), metrics, configs."""
from rlhf_jax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "compile_cache": ("enable_compilation_cache",),
    "config": (
        "ConfigError", "NonFiniteError", "apply_override", "config_from_dict", "config_to_dict", "load_config_file",
        "parse_config",
    ),
    "distributed": (
        "global_batch_from_local", "initialize", "is_main_process", "main_process_first",
        "on_main_process", "process_slice",
    ),
    "early_stopping": ("EarlyStoppingState", "early_stopping_init", "early_stopping_update",),
    "loop": ("LoopResult", "run_training",),
    "metrics": ("MetricBuffer", "MetricWriter", "Progress",),
    "moments": ("hashed_bits", "scale_by_adam_stored", "stochastic_round",),
    "optim_config": ("OptimizerConfig",),
    "optim": (
        "Optimizer", "apply_updates", "decay_mask", "frozen_labels",
        "learning_rate_schedule", "make_optimizer", "merge_trees",
    ),
    "state": ("TrainState", "accumulate_gradients", "create_train_state", "make_train_step",),
    "setup": ("compile_init", "leaf_names",),
})
