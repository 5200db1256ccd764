"""Shared test settings: hypothesis profiles sized for a 2-core CI machine, the tests folder on the
import path (tests/tiny_env.py is imported by name), XLA's CPU backend at optimisation level 1, JAX's
persistent compilation cache in a temporary folder for the whole session (its subprocesses and xdist
workers included), and the release of compiled programs after each module."""

import gc
import os
import shutil
import sys
import tempfile
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
# XLA's CPU backend at optimisation level 1 for the test session and every process it starts (read when
# the backend starts, so set before any test runs): LLVM's heavier passes take much of the compile time
# of the suite's thousands of small programs, and the tests check what programs compute, not how fast
# (a small training run with its final evaluation: 90 s at the default level, 67 s at level 1). The HLO
# is the same; floating-point results may differ in the last bits, so a test compares programs compiled
# alike or within tolerances, never against a hard-coded float of another build. Level 0 is not used:
# it changes enough last bits to move exact budget and twin comparisons across their edges.
# JAXSPLIT_TEST_XLA_OPT=default runs the suite at XLA's default level instead.
if os.environ.get("JAXSPLIT_TEST_XLA_OPT", "1") != "default":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1").strip()
# The command line's persistent compilation cache stays off in tests (nothing written to the user's
# cache folder) unless a test turns it on with --cache-dir.
os.environ.setdefault("JAXSPLIT_CACHE_DIR", "off")

#: Examples per property test in the default profile, unless the test sets its own max_examples.
CI_EXAMPLES = 100
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]
# "ci" (the default): derandomised, so every run draws the same examples and a failure reproduces
# from the test alone; no example database, so a local run cannot differ from CI's. "long"
# (HYPOTHESIS_PROFILE=long) draws fresh random examples, ten times as many, for local bug hunting.
settings.register_profile("ci", deadline=None, derandomize=True, database=None,
                          max_examples=CI_EXAMPLES, suppress_health_check=_QUIET)
settings.register_profile("long", deadline=None, max_examples=10 * CI_EXAMPLES, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drop every compiled program after each test module. Each executable holds a few memory
    mappings, and a whole suite in one process compiles thousands: past the kernel's limit on
    mappings per process (vm.max_map_count, 65,530 by default) XLA cannot map the next one and
    aborts the process."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def compilation_cache():
    """The folder of the session's persistent compilation cache (see :func:`pytest_configure`), for a
    test that hands it to a subprocess explicitly; every process the tests start inherits it through
    JAX_COMPILATION_CACHE_DIR anyway."""
    return os.environ["JAX_COMPILATION_CACHE_DIR"]


#: Programs that compile faster than this are not stored (JAX's default is 1 s; the command line's 0.2 s).
_CACHE_MIN_COMPILE_SECONDS = 0.2
#: A size limit turns on JAX's lock on the cache folder, which the session's processes share.
_CACHE_MAX_BYTES = 8 << 30
_cache_made = None


def pytest_configure(config):
    """JAX's persistent compilation cache on for the whole session, in a new temporary folder: a
    program compiled once is loaded instead of compiled again in a later module (after
    :func:`_release_compiled_programs`), in a subprocess of the command line or in a second xdist
    worker. It saves compilation only: the executables, and so the results, are the same. The folder
    is given to subprocesses and xdist workers through JAX_COMPILATION_CACHE_DIR (a worker uses its
    controller's) and removed at the end of the session."""
    global _cache_made
    if not hasattr(config, "workerinput"):  # the controller, or a run without xdist
        _cache_made = tempfile.mkdtemp(prefix="jaxsplit-test-jax-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_made
    os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(_CACHE_MAX_BYTES)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(_CACHE_MIN_COMPILE_SECONDS)
    from jax.experimental.compilation_cache import compilation_cache as cc

    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_compilation_cache_max_size", _CACHE_MAX_BYTES)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _CACHE_MIN_COMPILE_SECONDS)
    cc.reset_cache()


def pytest_unconfigure(config):
    if _cache_made is not None:
        shutil.rmtree(_cache_made, ignore_errors=True)
