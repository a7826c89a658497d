"""Multi-host setup: a thin wrapper over `jax.distributed.initialize`, and per-process data."""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import numpy as np

log = logging.getLogger(__name__)


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, cpu_collectives: str = "gloo") -> None:
    """Join the processes of a multi-host run (no-op for a single process).

    On Cloud TPU and under SLURM, JAX detects the cluster itself: call with no arguments.
    Elsewhere pass the coordinator ("host:port"), the number of processes and this one's id, or
    set RLHF_JAX_COORDINATOR / RLHF_JAX_NUM_PROCESSES / RLHF_JAX_PROCESS_ID. On CPU the
    collectives use `cpu_collectives` (gloo). Calling it again once joined does nothing, so a
    pipeline and each of its stages may all call it.
    """
    if jax.distributed.is_initialized():
        return
    coordinator_address = coordinator_address or os.environ.get("RLHF_JAX_COORDINATOR")
    if num_processes is None and "RLHF_JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["RLHF_JAX_NUM_PROCESSES"])
    if process_id is None and "RLHF_JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["RLHF_JAX_PROCESS_ID"])
    auto = any(k in os.environ for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                                         "CLOUD_TPU_TASK_ID", "MEGASCALE_COORDINATOR_ADDRESS"))
    if coordinator_address is None and not auto:
        return  # single process
    if (os.environ.get("JAX_PLATFORMS", "") in ("", "cpu")) and cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    log.info("process %d of %d joined; %d global devices", jax.process_index(),
             jax.process_count(), jax.device_count())


def on_main_process(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` on process 0 only (e.g. writing a shared file), then a barrier, so
    that no process reads the result before it exists. Returns the result on process 0, else
    None."""
    out = fn(*args, **kwargs) if jax.process_index() == 0 else None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"on_main_process:{getattr(fn, '__name__', fn)}")
    return out


def main_process_first(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` on process 0, then (after a barrier) on the other processes.

    For preparation that writes shared files (built-in data, a trained tokenizer, a tokenised
    dataset): process 0 writes them once, the others find them ready and only read. With one
    process this is just the call.
    """
    out = on_main_process(fn, *args, **kwargs)
    return out if jax.process_index() == 0 else fn(*args, **kwargs)


def is_main_process() -> bool:
    """True on the process that writes logs and reports."""
    return jax.process_index() == 0


def process_slice(global_batch: int) -> slice:
    """The rows of a global batch that this process loads (contiguous, equal shares)."""
    n = jax.process_count()
    if global_batch % n:
        raise ValueError(f"global batch {global_batch} is not divisible by {n} processes")
    per = global_batch // n
    return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def global_batch_from_local(local_batch: Any, mesh: jax.sharding.Mesh, rules: tuple) -> Any:
    """Assemble per-process rows into global arrays sharded along the batch axes."""
    from rlhf_jax.sharding import batch_sharding

    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        batch_sharding(mesh, rules, np.ndim(x)), np.asarray(x)), local_batch)
