"""What every stage's config and result hold (importable without JAX: the entry
scripts read configs before a stage runs)."""
from __future__ import annotations

import dataclasses
from typing import Optional

from rlhf_jax import models


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What a stage leaves behind: where, how far it got, and its final metrics."""

    run_dir: str
    export_dir: Optional[str]  # None when the run was preempted before exporting
    step: int
    preempted: bool
    metrics: dict = dataclasses.field(default_factory=dict)
    data: tuple[str, ...] = ()  # one line per prepared dataset: counts, splits, truncation
    # settings that defeat the stage (most prompts / responses cut, most responses without EOS)
    warnings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Settings every stage has: where it runs, its seed, its device mesh, how often it logs.

    `mesh` gives axis sizes over the devices ("fsdp=-1", "data=2,fsdp=2,tensor=2"); `sharding`
    the logical-axis rule preset (dp | fsdp | fsdp_tp). `lora` puts low-rank adapters on the
    models the stage trains (`--config.lora.rank=16 --config.lora.targets=q,k,v,o`). `allow_config_change` continues a run
    directory whose stored config differs from this one (see `layout.check_run_config`).
    """

    run_dir: str = "runs/run"  # where the run's files go (layout: stages.RunLayout)
    seed: int = 0  # seed of initialisation, data order and sampling
    mesh: str = "fsdp=-1"  # device mesh axis sizes, e.g. fsdp=-1 or data=2,fsdp=2,tensor=2
    sharding: str = "fsdp"  # logical-axis rule preset: dp | fsdp | fsdp_tp
    log_every: int = 10  # steps between metric fetches (JSONL, TensorBoard, progress)
    max_consecutive_skips: int = 10  # stop after more non-finite steps than this in a row
    allow_config_change: bool = False  # continue a run directory whose stored config differs
    remat: str = "none"  # trained models' block remat: none | full | dots | dots_no_batch
    attention: str = "xla"  # trained models' attention: xla | jax | cudnn (GPU, bf16)
    logit_chunk: int = 0  # vocabulary chunk of teacher-forced log-probs (0: full logits)
    # compiled programs cached across stages and runs: auto (<run_dir>/compile_cache), off, or a
    # directory; a JAX_COMPILATION_CACHE_DIR of yours is kept (train.enable_compilation_cache)
    compile_cache: str = "auto"
    # LoRA adapters on the trained models (rank 0: full fine-tuning); the base is frozen, the
    # export is merged and the adapter alone is written in PEFT's format to <run_dir>/adapter
    lora: models.LoraConfig = models.LoraConfig()

    def __post_init__(self):
        models.check_model_options(self.remat, self.attention, self.logit_chunk)
        if self.log_every <= 0:
            raise ValueError(f"log_every={self.log_every}: expected > 0")
        if self.max_consecutive_skips < 0:
            raise ValueError(f"max_consecutive_skips={self.max_consecutive_skips}: expected >= 0")
