"""What every training stage shares: the run settings, the result, and the training shell
(checkpoint restore or fresh init, the loop, metrics, preemption)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Optional

import jax

from rlhf_jax import sharding, train
from rlhf_jax.checkpoint import CheckpointConfig, Checkpointer
from rlhf_jax.stages.layout import RunLayout, check_run_config, record_run_config
from rlhf_jax.train import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What a stage leaves behind: where, how far it got, and its final metrics."""

    run_dir: str
    export_dir: Optional[str]  # None when the run was preempted before exporting
    step: int
    preempted: bool
    metrics: dict = dataclasses.field(default_factory=dict)


def optimizer_config(optim: OptimizerConfig, steps: int) -> OptimizerConfig:
    """The optimiser settings with the schedule's length defaulting to the stage's steps."""
    if optim.total_steps:
        return optim
    if optim.warmup_steps > steps:
        raise train.ConfigError(f"optim.warmup_steps={optim.warmup_steps} exceeds steps={steps} "
                                "(the schedule's length when optim.total_steps is 0)")
    return dataclasses.replace(optim, total_steps=steps)


def start_run(cfg, layout: RunLayout):
    """Check the config against the run directory (see `check_run_config`; the config is
    recorded when training starts), start the distributed runtime when configured, and build the
    device mesh: (mesh, rules)."""
    check_run_config(layout.config, train.config_to_dict(cfg),
                     allow_change=cfg.allow_config_change)
    train.initialize()
    return sharding.make_mesh(cfg.mesh), sharding.logical_rules(cfg.sharding)


def check_batch_size(field: str, value: int, mesh) -> None:
    """A batch must split evenly over the mesh's batch axes (data × fsdp) and the processes."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    for d in (shards, jax.process_count()):
        if value % d:
            raise train.ConfigError(f"{field} = {value} must be divisible by {d} (data×fsdp "
                                    f"devices = {shards}, processes = {jax.process_count()})")


def jit_train_step(step_fn: Callable, abstract_state, batch_sharding):
    """`step_fn` jitted with the state's shardings in and out, donating the old state."""
    state_sh = jax.tree.map(lambda a: a.sharding, abstract_state)
    return jax.jit(step_fn, in_shardings=(state_sh, batch_sharding),
                   out_shardings=(state_sh, None), donate_argnums=0)


def train_with_checkpoints(layout: RunLayout, checkpoint: CheckpointConfig, *, step: Callable,
                           abstract_state, init_state: Callable[[], Any], batches: Iterator,
                           total_steps: int, config: dict, mesh, rules,
                           before: Optional[Callable[[Any], None]] = None,
                           **loop_kwargs) -> train.LoopResult:
    """Record the run's `config` in the layout, resume from the newest readable checkpoint (or
    start from `init_state()`), then run `train.run_training` under the mesh's activation
    sharding, writing metrics to the layout.

    `before(state)` runs only on a fresh start (e.g. samples of the initial policy). Prints
    "resumed from step N" when resuming.
    """
    record_run_config(layout.config, config)
    directory = checkpoint.directory or str(layout.checkpoints)
    ckpt = Checkpointer(dataclasses.replace(checkpoint, directory=directory))
    restored = ckpt.restore(abstract_state)
    if restored is None:
        state, loop_state = init_state(), None
    else:
        state, loop_state = restored.state, restored.loop_state
        if hasattr(batches, "set_state"):
            batches.set_state(restored.data_state)
        print(f"resumed from step {restored.step}", flush=True)
    writer = train.MetricWriter(layout.metrics, layout.tensorboard)
    try:
        with sharding.activation_sharding(mesh, rules):
            if restored is None and before is not None:
                before(state)
            return train.run_training(step, state, batches, total_steps=total_steps,
                                      checkpointer=ckpt, writer=writer, config=config,
                                      loop_state=loop_state, **loop_kwargs)
    finally:
        ckpt.close()
        writer.close()


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Settings every stage has: where it runs, its seed, its device mesh, how often it logs.

    `mesh` gives axis sizes over the devices ("fsdp=-1", "data=2,fsdp=2,tensor=2"); `sharding`
    the logical-axis rule preset (dp | fsdp | fsdp_tp). `allow_config_change` continues a run
    directory whose stored config differs from this one (see `layout.check_run_config`).
    """

    run_dir: str = "runs/run"
    seed: int = 0
    mesh: str = "fsdp=-1"
    sharding: str = "fsdp"
    log_every: int = 10
    allow_config_change: bool = False

    def __post_init__(self):
        if self.log_every <= 0:
            raise ValueError(f"log_every={self.log_every}: expected > 0")
