"""Test-session setup: 8 fake CPU devices (set before JAX starts), no network access, a
compilation cache shared by this session's processes (fresh per session, so nothing carries
over between runs: the entry scripts compile the same programs in several tests), XLA's cheap
compile mode, and the order in which pytest-xdist's workers take the test files."""
import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="rlhf_jax_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    # the library's own threshold for a run's cache (rlhf_jax.train.compile_cache): the stages
    # build new jitted functions at every call, so a program compiled again by a later test
    # (or a resumed script) is read back when it took more than 0.1 s to compile
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
# The tests' models are tiny: compiling takes most of their time, running the compiled program
# little. XLA then skips most of LLVM's optimisation passes (jax_disable_most_optimizations),
# which cuts the unit tests' CPU time by about a quarter. The arithmetic is the same float32
# arithmetic in a possibly different order: on the tiny models, logits and gradients differ
# from the optimised program's by a few ulp, far inside every tolerance here, and comparisons
# within the suite compare programs compiled the same way. Set in the environment, so the
# scripts the tests start inherit it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


# pytest-xdist (setup.cfg runs the suite on 2 workers) gives each worker whole test files, so a
# module's trained fixtures are built once; files that share a session fixture or a server go
# to the same worker as one group. The files that take longest start first, so that the workers
# finish together instead of one waiting for the other's last long file.
_GROUPS = {
    "tests/labelling/": "tests/labelling/",  # one PostgreSQL server and one Chromium per worker
}
_LONGEST_FIRST = (  # measured with --durations=0 on 2 CPU cores, longest first
    "tests/integration/test_resume.py",
    "tests/integration/test_compare.py",
    "tests/test_notebooks.py",
    "tests/rlaif/test_rlaif_stages.py",
    "tests/integration/test_studies.py",
    "tests/integration/test_conversations.py",
    "tests/integration/test_lora_stages.py",
    "tests/integration/test_pipeline.py",
    "tests/interpret/test_attribution.py",
    "tests/integration/test_train_ppo.py",
    "tests/offline/test_objective.py",
    "tests/data/test_packing.py",
    "tests/integration/test_audit.py",
    "tests/models/test_lora.py",
    "tests/ppo/test_components.py",
    "tests/studies/test_active.py",
    "tests/losses/test_custom.py",
    "tests/models/test_transformer.py",
    "tests/integration/test_train_reward.py",
    "tests/test_readme.py",
    "tests/interpret/test_decisions.py",
    "tests/interpret/test_flags.py",
)


def _work_unit(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return next((group for prefix, group in _GROUPS.items() if path.startswith(prefix)), path)


def pytest_collection_modifyitems(items):
    """Longest files first (a stable sort: every file's tests stay together and in order)."""
    rank = {path: i for i, path in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_work_unit(item.nodeid), len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Whole files (or groups of files, `_GROUPS`) per worker, handed out in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class FileGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return _work_unit(nodeid)

    config.option.loadscopereorder = False
    return FileGroupScheduling(config, log)
