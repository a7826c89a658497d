"""JAX's persistent compilation cache for a run: compiled programs are written to a directory and
read back whenever the same program (same computation, shapes, shardings, devices, flags) is
compiled again: by a later stage of the same process, by a resumed run, by the next run that
shares the directory. On GPU the cache also holds XLA's per-fusion autotuning results.

The cache is trusted code (see `jax.experimental.compilation_cache.compilation_cache
.set_cache_dir`): point it only at directories that nobody else can write.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import jax
from jax.experimental.compilation_cache import compilation_cache as _jax_cache

# Programs that took less than this to compile are not written. JAX's default (1 s) leaves out
# most of the main job's programs on CPU (0.1-1 s each); below 0.1 s are the eager
# one-operation programs (50 of the main job's 72, 1 s of compiling in all). JAX's minimum
# entry size (`jax_persistent_cache_min_entry_size_bytes`, default 0: none) is left alone.
MIN_COMPILE_SECONDS = 0.1
_JAX_DEFAULT_MIN_COMPILE_SECONDS = 1.0
_OFF = ("", "off")

_ours: Optional[str] = None  # the directory this module configured (None: none, or the user's)


def enable_compilation_cache(directory: str) -> Optional[str]:
    """Cache compiled programs in `directory` (created if needed; "" or "off": no cache of
    ours); return the directory programs are cached in from now on, None when none is.

    A cache the user configured is never replaced: when `JAX_COMPILATION_CACHE_DIR` or
    `jax.config.jax_compilation_cache_dir` already names a directory this module did not set,
    that directory is kept (and returned), also for "off"; `jax_enable_compilation_cache=False`
    keeps every cache off. Safe to call more than once: a later call moves the cache this module
    set to the new directory, or turns it off. A minimum compile time the user set
    (`JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`) is kept; otherwise it becomes
    `MIN_COMPILE_SECONDS`, so that the small programs of a short run are cached too.

    JAX (0.10) opens the cache at the first compilation after a directory is set, so a first
    call works even after other programs have compiled (those are not cached); an open cache
    keeps its directory, so a call that moves or turns off the cache also resets it
    (`jax.experimental.compilation_cache.compilation_cache.reset_cache`, public API).
    """
    global _ours
    current = jax.config.jax_compilation_cache_dir
    if current and current != _ours:  # the user's own cache
        return current
    if not jax.config.jax_enable_compilation_cache:
        return None
    wanted = None
    if directory.strip().lower() not in _OFF:
        wanted = str(Path(directory).expanduser().absolute())
        Path(wanted).mkdir(parents=True, exist_ok=True)
    if wanted == current:
        return current
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ and \
            jax.config.jax_persistent_cache_min_compile_time_secs == \
            _JAX_DEFAULT_MIN_COMPILE_SECONDS:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_compilation_cache_dir", wanted)
    _jax_cache.reset_cache()  # an open cache would keep writing to the old directory
    _ours = wanted
    return wanted
