"""Supervised fine-tuning of the policy on a corpus (built-in synthetic default)."""
from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.run_dir = "runs/sft"
    c.seed = 0
    c.model_dir = ""  # local Hugging Face directory; empty: the preset below, randomly initialised
    c.preset = "tiny-llama"
    c.dtype = "float32"
    c.mesh = "fsdp=-1"
    c.sharding = "fsdp"
    # "progression": synthetic token sequences; "text": a JSONL/Parquet `text` field (empty file:
    # the built-in corpus, with a tokenizer trained on it when model_dir is empty)
    c.data = ConfigDict(dict(source="progression", file="", max_len=24))
    c.steps = 200
    c.batch_size = 16
    c.length = 32
    c.num_microbatches = 1
    c.log_every = 10
    c.max_consecutive_skips = 10
    c.optim = ConfigDict(dict(learning_rate=3e-3, warmup_steps=20, schedule="cosine",
                              weight_decay=0.01, clip_norm=1.0))
    c.checkpoint = ConfigDict(dict(save_every=50, keep_last=2, async_save=True))
    return c
