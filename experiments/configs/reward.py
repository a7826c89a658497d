"""Reward-model training from human comparisons (built-in simulated annotators by default)."""
from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.run_dir = "runs/reward"
    c.seed = 0
    c.model_dir = ""  # local HF directory of the base model; empty: the preset, randomly initialised
    c.preset = "tiny-llama"
    c.mesh = "fsdp=-1"
    c.sharding = "fsdp"
    c.num_reward_outputs = 1  # > 1: an ensemble of heads on one backbone
    c.dropout = 0.0  # embedding / attention / residual dropout while training
    c.data = ConfigDict(dict(train_file="", kind="pairwise", rating_low=0.0, rating_high=1.0,
                             on_error="raise", validation_fraction=0.1, builtin_pairs=2000,
                             max_prompt_len=8, max_response_len=10))
    c.loss = ConfigDict(dict(margin=0.0, label_smoothing=0.0, scalar_weight=1.0,
                             centering_coef=0.01))
    c.steps = 300
    c.batch_size = 32
    c.optim = ConfigDict(dict(learning_rate=1e-3, warmup_steps=20, schedule="cosine",
                              weight_decay=0.01, clip_norm=1.0))
    c.eval_every = 50
    c.early_stopping = ConfigDict(dict(metric="eval/loss", patience=0, mode="min"))
    c.normalise_samples = 512
    c.log_every = 10
    c.checkpoint = ConfigDict(dict(save_every=50, keep_last=2, keep_best=1,
                                   best_metric="eval/accuracy", best_mode="max", async_save=True))
    return c
