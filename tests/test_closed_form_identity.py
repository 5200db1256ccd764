"""The device-major closed form returns the same int32 rows, bit for bit, as the previous
implementation (device axis last, one instance at a time; frozen in tests/previous_closed_form.py):
batched, single-instance and vmapped calls (as the environment makes them), on random instances and
on the hard cases (identical devices with exact ties, zero and tiny shares, one-row layers, no local
coordinator, coarse share grids)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import previous_closed_form as previous
from test_solvers import as_arrays, clusters, small_layers

from jaxsplit import envs, sampling, solvers
from jaxsplit.latency import Cluster, LayerArrays

KINDS = ("random", "same_devices", "no_local", "one_row", "few_rows", "zero_shares", "tiny_shares", "grid_shares")

_previous = jax.jit(jax.vmap(previous.closed_form_split))
_previous_plain = jax.jit(jax.vmap(previous.closed_form_plain))
_plain_major = jax.jit(lambda la, cl, a: solvers.closed_form_plain(la, jax.tree.map(jnp.transpose, cl), a.T).T)


def hard_batch(rng: np.random.Generator, batch: int, n: int, kind: str) -> tuple[LayerArrays, Cluster, jax.Array]:
    """A float32 batch of ``kind``: layers (B,), cluster fields and shares (B, N)."""
    if kind == "random":  # random_batch includes linear layers (one output row)
        la, cl, share, _ = sampling.random_batch(rng, batch, n)
    else:
        la, cl, share = sampling.random_arrays(rng, batch, n, pool=256)
    f, b, t = (np.array(x) for x in (cl.flops, cl.bandwidth, cl.latency))
    share = np.array(share)
    lay = {k: np.array(v) for k, v in vars(la).items()}
    rows = np.arange(batch)
    if kind == "same_devices":  # identical remote devices, equal shares: exact ties everywhere
        f[:] = f[:, -1:]
        b[:, 1:], t[:, 1:] = b[:, -1:], t[:, -1:]
        share[:] = np.where(rng.random((batch, 1)) < 0.5, 1.0, share[:, -1:] + (share[:, -1:] == 0) * 0.5)
    elif kind == "no_local":
        b[:, 0] = rng.uniform(100e6 / 8, 2e9 / 8, batch)
        t[:, 0] = rng.uniform(0.2e-3, 5e-3, batch)
    elif kind == "one_row":
        lay["out_height"][:] = 1.0
        lay["in_height"] = np.minimum(lay["in_height"], lay["kernel_extent"] + lay["pad_top"])
    elif kind == "few_rows":
        h = rng.integers(1, 5, batch).astype(np.float32)
        lay["out_height"] = h
        lay["in_height"] = np.maximum((h - 1) * lay["stride"] - lay["pad_top"] + lay["kernel_extent"], 1)
    elif kind == "zero_shares":
        share[rng.random((batch, n)) < 0.5] = 0.0
        share[rows, rng.integers(0, n, batch)] = rng.uniform(0.05, 1, batch)
    elif kind == "tiny_shares":
        share = np.where(rng.random((batch, n)) < 0.3, rng.uniform(1e-6, 1e-3, (batch, n)), share)
    elif kind == "grid_shares":  # shares on a coarse grid, as a policy gives them: many equal values
        share = rng.integers(0, 5, (batch, n)) / 4
        share[rows, rng.integers(0, n, batch)] = 1.0
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return (LayerArrays(**{k: f32(v) for k, v in lay.items()}), Cluster(f32(f), f32(b), f32(t)), f32(share))


def assert_same_rows(got: np.ndarray, want: np.ndarray, kind: str) -> None:
    """int32 rows (B, N) equal, naming the instance kind and the first instance that differs."""
    assert got.dtype == np.int32 and got.shape == want.shape
    bad = np.flatnonzero((got != want).any(axis=1))
    assert bad.size == 0, f"{kind}: {bad.size} instances differ, first {got[bad[0]]} vs {want[bad[0]]}"


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2, 5, 8, 16])
def test_batched_closed_form_equals_previous(n):
    rng = np.random.default_rng(40 + n)
    for kind in KINDS:
        # 2200 instances: several device-major blocks (with padding) for N >= 8, one call below.
        la, cl, share = hard_batch(rng, 2200, n, kind)
        want = np.asarray(_previous(la, cl, share))
        got = np.asarray(solvers.solve_batch("closed_form", la, cl, share))
        assert_same_rows(got, want, kind)
        plain = np.asarray(_plain_major(la, cl, share))
        assert (plain == np.asarray(_previous_plain(la, cl, share))).all(), kind


_single = jax.jit(solvers.closed_form_split)
_single_previous = jax.jit(previous.closed_form_split)


def single_instance(layer, cluster, same: bool):
    """A hypothesis-drawn layer and cluster as float32 arrays (layer, cluster, share); with ``same``
    the remote devices are made identical with equal shares (exact ties everywhere)."""
    flops, bandwidth, latency, share = cluster
    if same and len(flops) > 2:
        flops = [flops[1]] * len(flops)
        bandwidth = bandwidth[:2] + [bandwidth[1]] * (len(flops) - 2)
        latency = latency[:2] + [latency[1]] * (len(flops) - 2)
        share = share[:1] + [max(share[1], 0.2)] * (len(flops) - 1)
    la, cl = as_arrays(layer, flops, bandwidth, latency, jnp.float32)
    return la, cl, jnp.asarray(share, jnp.float32)


@pytest.mark.slow
@settings(max_examples=300)
@given(small_layers(max_out=40), clusters(max_devices=6), st.booleans())
def test_single_instance_equals_previous(layer, cluster, same):
    la, cl, a = single_instance(layer, cluster, same)
    got = np.asarray(_single(la, cl, a))
    assert got.dtype == np.int32
    assert got.tolist() == np.asarray(_single_previous(la, cl, a)).tolist()


def test_vmapped_single_instance_equals_previous_and_never_retraces():
    rng = np.random.default_rng(3)
    def batched(la, cl, share):
        return jax.vmap(solvers.closed_form_split)(la, cl, share)

    fn = jax.jit(chex.assert_max_traces(batched, n=1))
    for kind in ("random", "same_devices", "grid_shares"):
        la, cl, share = hard_batch(rng, 512, 6, kind)
        assert (np.asarray(fn(la, cl, share)) == np.asarray(_previous(la, cl, share))).all(), kind


def _previous_exec_times(env, cluster: Cluster, share: np.ndarray, model: np.ndarray) -> np.ndarray:
    """E of each request from the previous per-layer closed form: every unique layer of the request
    solved alone (rows of previous.closed_form_split), its exact float64 latency from those rows
    (MODEL.md section 3, in numpy) times its multiplicity, summed. (B,) seconds."""
    cat = env.catalogue
    width = cat.count.shape[1]
    batch = share.shape[0]
    idx = (model[:, None] * width + np.arange(width)).reshape(-1)  # (B * U,) padded layers
    layer = jax.tree.map(lambda a: jnp.asarray(a).reshape(-1)[idx], cat.layers)
    owner = np.repeat(np.arange(batch), width)
    part = jax.tree.map(lambda f: jnp.asarray(f)[owner], cluster)
    rows = np.asarray(_previous(layer, part, jnp.asarray(share[owner], jnp.float32))).astype(np.float64)
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    lay = {k: f64(v)[:, None] for k, v in vars(layer).items()}
    a = f64(share[owner])
    flops, message = f64(part.flops) * a, 2 * f64(part.latency)
    bandwidth = np.where(a > 0, f64(part.bandwidth) * np.where(a > 0, a, 1.0), 1.0)
    start = np.cumsum(rows, axis=1) - rows
    lo = np.maximum(0.0, start * lay["stride"] - lay["pad_top"])
    hi = np.minimum(lay["in_height"], (start + rows - 1) * lay["stride"] - lay["pad_top"] + lay["kernel_extent"])
    moved = np.maximum(hi - lo, 0) * lay["in_row_bytes"] + rows * lay["out_row_bytes"]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = message + np.where(np.isinf(bandwidth), 0.0, moved / bandwidth) + rows * lay["row_work"] / flops
    latency = np.where(rows > 0, t, 0.0).max(axis=1)
    count = np.asarray(cat.count, np.float64).reshape(-1)[idx]
    return (latency * count).reshape(batch, width).sum(axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("n", [4, 8])
def test_environment_exec_times_equal_previous_per_layer(n):
    """The environment's E (its requests' layers laid end to end and solved in device-major chunks,
    under vmap over environments, nested vmap and alone) equals E from the previous per-layer rows
    with exact float64 latencies, for random clusters, the default fixed cluster (identical remote
    devices: exact ties) and grid, uniform, all-one and fallback shares; several chunks with a
    partial last one, and no retracing."""
    env, params = envs.make("alloc-v0", num_devices=n)
    batch = env.chunk // 6  # about 18 layers a request: three chunks, the last partial
    rng = np.random.default_rng(n)
    keys = jax.random.split(jax.random.key(n), batch)
    random_clusters = jax.vmap(env.sample_cluster, in_axes=(0, None))(keys, params)
    fixed = jax.tree.map(lambda x: jnp.broadcast_to(x, (batch, n)),
                         Cluster(params.cluster_flops, params.cluster_bandwidth, params.cluster_latency))
    shares = [np.maximum(rng.integers(0, 5, (batch, n)) / 4, np.eye(n)[rng.integers(0, n, batch)]),
              rng.uniform(0.05, 1.0, (batch, n)), np.ones((batch, n)), np.eye(n)[np.zeros(batch, int)] * 0.05]
    def batch_exec(cluster, share, model):
        return jax.vmap(env.exec_time)(cluster, share, model)

    chex.clear_trace_counter()
    vmapped = jax.jit(chex.assert_max_traces(batch_exec, n=1))
    nested = jax.jit(jax.vmap(jax.vmap(env.exec_time)))
    single = jax.jit(env.exec_time)
    for cluster in (random_clusters, fixed):
        for share in shares:
            share = np.asarray(share, np.float32)
            model = rng.integers(0, env.num_models, batch).astype(np.int32)
            want = _previous_exec_times(env, cluster, share, model)
            got = np.asarray(vmapped(cluster, jnp.asarray(share), jnp.asarray(model)), np.float64)
            assert 2 * env.chunk < int(np.asarray(env.catalogue.size)[model].sum()) < 4 * env.chunk
            np.testing.assert_allclose(got, want, rtol=2e-6)
            two = jax.tree.map(lambda x: x[:batch // 2 * 2].reshape((2, batch // 2) + x.shape[1:]),
                               (cluster, jnp.asarray(share), jnp.asarray(model)))
            np.testing.assert_allclose(np.asarray(nested(*two)).reshape(-1), want[:batch // 2 * 2], rtol=2e-6)
            for b in (0, batch - 1):
                one = jax.tree.map(lambda f: f[b], cluster)
                assert float(single(one, jnp.asarray(share[b]), int(model[b]))) == pytest.approx(want[b], rel=2e-6)
