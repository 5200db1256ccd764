"""Shared test settings: hypothesis profiles sized for a 2-core CI machine, the tests folder on the
import path (tests/tiny_env.py is imported by name), a compilation-cache fixture for the modules
that compile the same evaluation programs more than once, and the release of compiled programs after
each module."""

import gc
import os
import sys
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
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


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """JAX's persistent compilation cache, on while the requesting module's tests run (one folder per
    pytest session; a subprocess shares it through JAX_COMPILATION_CACHE_DIR = the yielded path): a
    program compiled earlier in the session is loaded instead of compiled again. It saves compilation
    only: the executables, and so the results, are the same."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    path = tmp_path_factory.getbasetemp() / "jax_cache"
    path.mkdir(exist_ok=True)
    saved = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(path))
    cc.reset_cache()
    yield str(path)
    jax.config.update("jax_compilation_cache_dir", saved)
    cc.reset_cache()


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drop every compiled program after each test module. Each executable holds a few memory
    mappings, and a whole suite in one process compiles thousands: past the kernel's limit on
    mappings per process (vm.max_map_count, 65,530 by default) XLA cannot map the next one and
    aborts the process."""
    yield
    jax.clear_caches()
    gc.collect()
