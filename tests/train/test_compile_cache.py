"""The persistent compilation cache: turned on for a run, reused by the next process, never
replacing a cache the user configured, and off when asked. Each case runs in a fresh process
(JAX decides at its first compilation whether the cache is used), without the test session's
own cache (tests/conftest.py)."""
import os
import subprocess
import sys

from rlhf_jax.train.compile_cache import MIN_COMPILE_SECONDS

# Arguments: directories for enable_compilation_cache in turn ("set:D" sets jax's config to D
# as a user would). Something compiles before the first call, as a library user's code might,
# and a program `early` after each call but the last; the program `final` after the last.
SCRIPT = """
import sys
import jax, jax.numpy as jnp
from rlhf_jax.train import enable_compilation_cache
def early(x):
    return jnp.cos(x) @ x.T
def final(x):
    return jnp.tanh(x) @ x.T
jnp.zeros(2).block_until_ready()
for i, arg in enumerate(sys.argv[1:]):
    if i:
        jax.jit(early)(jnp.ones((i, 4))).block_until_ready()
    if arg.startswith("set:"):
        jax.config.update("jax_compilation_cache_dir", arg[4:])
    else:
        print("enabled:", enable_compilation_cache(arg))
print("dir:", jax.config.jax_compilation_cache_dir)
print("min:", jax.config.jax_persistent_cache_min_compile_time_secs)
jax.jit(final)(jnp.ones((8, 8))).block_until_ready()
"""
HIT = "Persistent compilation cache hit for 'jit_final'"


def _run(*args, **env):
    """(stdout lines, stderr) of SCRIPT with `args`; `env` adds variables; every compilation
    is cached (minimum compile time 0) unless `min_time=None`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    min_time = env.pop("min_time", "0")
    if min_time is not None:
        base["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = min_time
    out = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)], capture_output=True,
                         text=True, timeout=120, env={**base, "JAX_PLATFORMS": "cpu",
                                                      "JAX_LOG_COMPILES": "1", **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines(), out.stderr


def _files(path, program=""):
    """The cache files in `path` (of the jitted function `program`, if given)."""
    return [p for p in path.rglob(f"jit_{program}*") if p.is_file()] if path.exists() else []


def test_a_second_process_reuses_the_programs_the_first_cached(tmp_path):
    cache = tmp_path / "cache"
    lines, err = _run(cache)
    assert f"enabled: {cache}" in lines and f"dir: {cache}" in lines
    assert "min: 0.0" in lines  # the user's minimum compile time is kept
    assert _files(cache, "final") and HIT not in err  # although something compiled before
    lines, err = _run(cache)
    assert HIT in err


def test_the_minimum_compile_time_is_lowered_unless_the_user_set_it(tmp_path):
    lines, _ = _run(tmp_path / "cache", min_time=None)
    assert f"min: {MIN_COMPILE_SECONDS}" in lines and MIN_COMPILE_SECONDS < 1.0  # JAX's: 1 s


def test_a_cache_the_user_configured_is_kept(tmp_path):
    user, ours = tmp_path / "user", tmp_path / "ours"
    lines, _ = _run(ours, "off", JAX_COMPILATION_CACHE_DIR=str(user))
    assert lines[:3] == [f"enabled: {user}", f"enabled: {user}", f"dir: {user}"]
    assert _files(user, "final") and not ours.exists()
    lines, _ = _run(f"set:{user}", ours)  # set in jax's config rather than the environment
    assert lines[:2] == [f"enabled: {user}", f"dir: {user}"] and not ours.exists()


def test_off_turns_the_cache_off(tmp_path):
    ours = tmp_path / "ours"
    lines, _ = _run("off")
    assert lines[:2] == ["enabled: None", "dir: None"]
    lines, _ = _run(ours, "")  # a later call turns off the cache an earlier call set
    assert lines[:3] == [f"enabled: {ours}", "enabled: None", "dir: None"]
    assert _files(ours, "early") and not _files(ours, "final")


def test_calling_again_keeps_or_moves_its_own_cache(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    lines, _ = _run(a, a, b)
    assert lines[:4] == [f"enabled: {a}", f"enabled: {a}", f"enabled: {b}", f"dir: {b}"]
    assert _files(a, "early") and not _files(a, "final") and _files(b, "final")
