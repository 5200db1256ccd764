"""The compiled closed-form kernel (jaxsplit.kernels) against the array closed form it replaces on
the CPU: the same int32 rows on random and hard instances (exact ties, zero and tiny shares, one-row
layers) in float32 and float64; the same request execution times in the environment, under nested
vmap; no retrace; the fallbacks (kernel off, no working compiler) with clear messages; and the
table columns the library assumes, checked against Python's when it loads."""

import ctypes
import dataclasses
import os
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from test_closed_form_identity import KINDS, assert_same_rows, hard_batch, single_instance
from test_solvers import clusters, small_layers

from jaxsplit import envs, kernels, solvers
from jaxsplit.catalogue import TABLE_FIELDS
from jaxsplit.latency import LAYER_FIELDS, LayerArrays

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C++ compiler: the kernel cannot be built")

_kernel = jax.jit(kernels.kernel_rows)
_arrays = jax.jit(solvers.solve_device_major_arrays)
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n", [1, 2, 3, 8, 13])
def test_kernel_rows_equal_array_rows(n):
    rng = np.random.default_rng(70 + n)
    for kind in KINDS:
        la, cl, share = hard_batch(rng, 1500, n, kind)
        want = np.asarray(_arrays(la, cl, share))
        got = np.asarray(_kernel(la, cl, share))
        assert_same_rows(got, want, kind)
        # and they are a split: non-negative, summing to H_out, nothing on a device with no share
        assert (got >= 0).all() and (got.sum(axis=1) == np.asarray(la.out_height)).all()
        assert (got[np.asarray(share) == 0] == 0).all()


def test_kernel_rows_equal_array_rows_float64():
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        for kind in ("random", "same_devices", "zero_shares", "grid_shares"):
            la, cl, share = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), hard_batch(rng, 1000, 6, kind))
            want = np.asarray(jax.jit(solvers.solve_device_major_arrays)(la, cl, share))
            got = np.asarray(jax.jit(kernels.kernel_rows)(la, cl, share))
            assert (got == want).all(), kind


_one_kernel = jax.jit(lambda la, cl, a: kernels.kernel_rows(jax.tree.map(lambda x: x[None], la),
                                                            jax.tree.map(lambda x: x[None], cl), a[None])[0])
_one_arrays = jax.jit(solvers.closed_form_split)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(small_layers(max_out=40), clusters(max_devices=6), st.booleans())
def test_kernel_single_instance_equals_closed_form_split(layer, cluster, same):
    la, cl, a = single_instance(layer, cluster, same)  # same: identical remote devices, exact ties
    np.testing.assert_array_equal(np.asarray(_one_kernel(la, cl, a)), np.asarray(_one_arrays(la, cl, a)))


def _requests(env, params, rng, batch):
    cluster = jax.vmap(env.sample_cluster, in_axes=(0, None))(jax.random.split(jax.random.key(int(rng.integers(1 << 30))), batch), params)
    share = rng.uniform(0.0, 1.0, (batch, env.num_devices))
    share[rng.random(share.shape) < 0.3] = 0.0
    share[:, 0] = np.maximum(share[:, 0], 0.1)
    model = rng.integers(0, env.num_models, batch)
    return cluster, jnp.asarray(share, env.dtype), jnp.asarray(model, jnp.int32)


@pytest.mark.slow
@pytest.mark.parametrize("n", [4, 8])
def test_environment_exec_times_kernel_equals_arrays_under_nested_vmap(n):
    env, params = envs.make("alloc-v0", num_devices=n)
    rng = np.random.default_rng(n)
    pop, batch = 3, 700
    parts = [_requests(env, params, rng, batch) for _ in range(pop)]
    cluster, share, model = jax.tree.map(lambda *x: jnp.stack(x), *parts)
    # a population (outer vmap) of batches of requests (inner vmap: the exec_time batching rule)
    nested = jax.jit(jax.vmap(jax.vmap(env.exec_time)))
    got = np.asarray(nested(cluster, share, model))
    want = np.stack([np.asarray(jax.jit(env.engine._array_exec_times)(*p)) for p in parts])
    assert got.shape == (pop, batch) and np.isfinite(got).all() and (got > 0).all()
    np.testing.assert_allclose(got, want, rtol=2e-6)
    # the kernel itself, called directly on one batch
    direct = np.asarray(jax.jit(env.engine._kernel_exec_times)(*parts[1]))
    np.testing.assert_allclose(direct, want[1], rtol=2e-6)


def test_environment_exec_times_kernel_float64():
    with jax.enable_x64(True):
        env, params = envs.make("alloc-v0", num_devices=5)
        assert env.dtype == jnp.float64
        parts = _requests(env, params, np.random.default_rng(3), 500)
        got = np.asarray(jax.jit(jax.vmap(env.exec_time))(*parts))
        want = np.asarray(jax.jit(env.engine._array_exec_times)(*parts))
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_kernel_never_retraces():
    rng = np.random.default_rng(1)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def solve(la, cl, share):
        return kernels.kernel_rows(la, cl, share)

    for _ in range(3):
        la, cl, share = hard_batch(rng, 300, 8, "random")
        jax.block_until_ready(solve(la, cl, share))


def test_too_many_devices_use_the_array_code():
    rng = np.random.default_rng(2)
    la, cl, share = hard_batch(rng, 20, kernels.MAX_DEVICES + 1, "random")
    assert not kernels.supports(kernels.MAX_DEVICES + 1)
    rows = np.asarray(solvers.solve_batch("closed_form", la, cl, share))
    assert (rows.sum(axis=1) == np.asarray(la.out_height)).all()


def _python(code: str, **env_vars) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_vars}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


_PROBE = """
import warnings, numpy as np, jax
from jaxsplit import kernels, solvers, sampling
warnings.simplefilter("always")
la, cl, share, _ = sampling.random_batch(np.random.default_rng(0), 64, 4)
rows = np.asarray(solvers.solve_batch("closed_form", la, cl, share))
assert (rows.sum(axis=1) == np.asarray(la.out_height)).all()
print("available", kernels.available())
"""


@pytest.mark.slow
def test_kernel_off_and_broken_compiler_fall_back(tmp_path):
    off = _python(_PROBE, JAXSPLIT_KERNELS="off", JAXSPLIT_CACHE=str(tmp_path / "a"))
    assert off.returncode == 0, off.stderr
    assert "available False" in off.stdout and not (tmp_path / "a").exists()
    broken = _python(_PROBE, CXX="false", JAXSPLIT_CACHE=str(tmp_path / "b"))
    assert broken.returncode == 0, broken.stderr
    assert "available False" in broken.stdout and "kernel is unavailable" in broken.stderr
    # nothing half-written is left in the cache
    assert not any(p.is_file() for p in (tmp_path / "b").rglob("*"))
    required = _python(_PROBE, CXX="false", JAXSPLIT_KERNELS="require", JAXSPLIT_CACHE=str(tmp_path / "c"))
    assert required.returncode != 0 and "KernelBuildError" in required.stderr and "compiling" in required.stderr


def test_bad_mode_names_the_variable(monkeypatch):
    monkeypatch.setenv("JAXSPLIT_KERNELS", "sometimes")
    with pytest.raises(ValueError, match="JAXSPLIT_KERNELS"):
        kernels.mode()


@pytest.mark.slow
def test_build_is_cached_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSPLIT_CACHE", str(tmp_path))
    path = kernels.build()
    assert path.exists() and path.is_relative_to(tmp_path)
    stamp = path.stat().st_mtime_ns
    assert kernels.build() == path and path.stat().st_mtime_ns == stamp  # cached: not rebuilt
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left


def test_library_reports_the_table_fields_of_python():
    """The compiled kernel reads its table by column position; the order it assumes is Python's."""
    assert LAYER_FIELDS == tuple(f.name for f in dataclasses.fields(LayerArrays))
    assert TABLE_FIELDS == LAYER_FIELDS + ("count",)
    reported = ctypes.CDLL(str(kernels.build())).jaxsplit_table_fields
    reported.restype = ctypes.c_char_p
    assert reported().decode() == ",".join(TABLE_FIELDS)


def test_table_fields_mismatch_makes_the_kernel_unavailable(monkeypatch):
    """A library whose columns differ from Python's is refused like one that does not build: a
    warning and the array code in mode auto, KernelBuildError in mode require; both orders named."""
    swapped = (TABLE_FIELDS[1], TABLE_FIELDS[0]) + TABLE_FIELDS[2:]
    monkeypatch.setattr(kernels, "TABLE_FIELDS", swapped)
    monkeypatch.setattr(kernels, "_state", {})  # not loaded yet in this process (restored afterwards)
    monkeypatch.setenv("JAXSPLIT_KERNELS", "require")
    with pytest.raises(kernels.KernelBuildError, match="table columns") as err:
        kernels._load()
    assert ",".join(swapped) in str(err.value) and ",".join(TABLE_FIELDS) in str(err.value)
    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setenv("JAXSPLIT_KERNELS", "auto")
    with pytest.warns(RuntimeWarning, match="kernel is unavailable.*table columns"):
        assert kernels._load() is False
    assert not kernels.available()  # cached for the process: no second warning, no kernel
