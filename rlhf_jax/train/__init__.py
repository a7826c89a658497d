"""Train state, optimiser factory, the training loop (the impure shell), metrics, configs."""
from rlhf_jax.train.compile_cache import enable_compilation_cache
from rlhf_jax.train.config import (ConfigError, apply_override, config_from_dict, config_to_dict,
                                   load_config_file, parse_config)
from rlhf_jax.train.distributed import (global_batch_from_local, initialize, is_main_process,
                                        main_process_first, on_main_process,
                                        process_slice)
from rlhf_jax.train.early_stopping import (EarlyStoppingState, early_stopping_init,
                                           early_stopping_update)
from rlhf_jax.train.loop import LoopResult, NonFiniteError, run_training
from rlhf_jax.train.metrics import MetricBuffer, MetricWriter, Progress
from rlhf_jax.train.optim import (Optimizer, OptimizerConfig, apply_updates, decay_mask,
                                  frozen_labels, learning_rate_schedule, make_optimizer,
                                  merge_trees)
from rlhf_jax.train.state import (TrainState, accumulate_gradients, create_train_state,
                                  make_train_step)
from rlhf_jax.train.setup import compile_init, leaf_names
