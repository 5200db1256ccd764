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


@pytest.mark.parametrize("n", [1, 2, 5, 8, 16])
def test_batched_closed_form_equals_previous(n):
    rng = np.random.default_rng(40 + n)
    for kind in KINDS:
        # 2200 instances: several device-major blocks (with padding) for N >= 8, one call below.
        la, cl, share = hard_batch(rng, 2200, n, kind)
        want = np.asarray(_previous(la, cl, share))
        got = np.asarray(solvers.solve_batch("closed_form", la, cl, share))
        assert got.dtype == np.int32 and got.shape == want.shape
        bad = np.flatnonzero((got != want).any(axis=1))
        assert bad.size == 0, f"{kind}: {bad.size} rows differ, first {got[bad[0]]} vs {want[bad[0]]}"
        plain = np.asarray(_plain_major(la, cl, share))
        assert (plain == np.asarray(_previous_plain(la, cl, share))).all(), kind


_single = jax.jit(solvers.closed_form_split)
_single_previous = jax.jit(previous.closed_form_split)


@settings(max_examples=300)
@given(small_layers(max_out=40), clusters(max_devices=6), st.booleans())
def test_single_instance_equals_previous(layer, cluster, same):
    flops, bandwidth, latency, share = cluster
    if same and len(flops) > 2:  # identical remote devices with equal shares: exact ties
        flops = [flops[1]] * len(flops)
        bandwidth = bandwidth[:2] + [bandwidth[1]] * (len(flops) - 2)
        latency = latency[:2] + [latency[1]] * (len(flops) - 2)
        share = share[:1] + [max(share[1], 0.2)] * (len(flops) - 1)
    la, cl = as_arrays(layer, flops, bandwidth, latency, jnp.float32)
    a = jnp.asarray(share, jnp.float32)
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


@pytest.mark.parametrize("n", [4, 8])
def test_environment_rows_equal_previous_per_layer(n):
    """The environment's per-layer solve (vmap over the layers of a request, inside a vmap over
    environments) gives the previous rows, for random clusters, the default fixed cluster
    (identical remote devices: exact ties) and grid, uniform, all-one and fallback shares."""
    env, params = envs.make("alloc-v0", num_devices=n)
    layers = env.catalogue.flat_layers
    rng = np.random.default_rng(n)
    keys = jax.random.split(jax.random.key(n), 64)
    random_clusters = jax.vmap(env.sample_cluster, in_axes=(0, None))(keys, params)
    fixed = jax.tree.map(lambda x: jnp.broadcast_to(x, (64, n)),
                         Cluster(params.cluster_flops, params.cluster_bandwidth, params.cluster_latency))
    shares = [np.maximum(rng.integers(0, 5, (64, n)) / 4, np.eye(n)[rng.integers(0, n, 64)]),
              rng.uniform(0.05, 1.0, (64, n)), np.ones((64, n)), np.eye(n)[np.zeros(64, int)] * 0.05]

    def per_layer(solver):
        return jax.jit(jax.vmap(lambda c, a: jax.vmap(solver, in_axes=(0, None, None))(layers, c, a)))

    new, old = per_layer(solvers.closed_form_split), per_layer(previous.closed_form_split)
    for cluster in (random_clusters, fixed):
        for share in shares:
            share = jnp.asarray(share, jnp.float32)
            got, want = np.asarray(new(cluster, share)), np.asarray(old(cluster, share))
            assert got.shape == want.shape == (64, layers.out_height.shape[0], n)
            assert (got == want).all()
