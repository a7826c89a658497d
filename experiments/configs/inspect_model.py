"""Config for experiments/inspect_model.py: load (or build) a model, shard it, run a forward
pass."""
from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.model_dir = ""  # a local Hugging Face directory; empty: the built-in preset below
    config.preset = "tiny-llama"  # used when model_dir is empty
    config.dtype = "float32"  # compute dtype; parameters stay in param_dtype
    config.param_dtype = "float32"  # parameter dtype
    config.mesh = "fsdp=-1"  # axis sizes over all local devices, e.g. "data=2,fsdp=2,tensor=2"
    config.sharding = "fsdp"  # rule preset: dp | fsdp | fsdp_tp
    config.batch_size = 8  # rows of the random batch
    config.length = 64  # tokens per row
    config.seed = 0  # initialisation and data seed
    return config
