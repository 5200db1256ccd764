"""The latency model's tables and whole-request latency against hand-computed values and the numpy
reference (jaxsplit/reference.py); the per-layer times are checked in tests/test_solvers.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsplit import reference, sampling
from jaxsplit.latency import Cluster, allocation_rates, layer_arrays, layer_arrays_numpy, request_latency
from jaxsplit.layers import Layer

enable_x64 = lambda: jax.enable_x64(True)  # noqa: E731


def random_rows(rng, total, share):
    """A random split of ``total`` rows over the devices with a positive share (int (N,))."""
    rows = np.zeros(len(share), int)
    active = np.flatnonzero(np.asarray(share) > 0)
    cuts = np.sort(rng.integers(0, total + 1, len(active) - 1))
    rows[active] = np.diff(np.concatenate([[0], cuts, [total]]))
    return rows


def test_layer_table_by_hand():
    # 3x3 conv, stride 2, padding 1, dilation 2, 10 x 12 input, 3 -> 8 channels: keff 5, 4 x 5 output
    layer = Layer("conv", 3, 8, (3, 3), (2, 2), (1, 1, 1, 1), (2, 2), in_height=10, in_width=12)
    cols = layer_arrays_numpy([layer])  # float32 elements (4 bytes) by default
    want = {"in_height": 10, "out_height": 4, "stride": 2, "pad_top": 1, "kernel_extent": 5,
            "in_row_bytes": 12 * 3 * 4, "out_row_bytes": 5 * 8 * 4, "row_work": 5 * 8 * (3 * 3 * 3) * 2}  # 2 FLOP a MAC
    assert {k: float(v[0]) for k, v in cols.items()} == want
    assert all(v.dtype == np.float32 for v in cols.values())
    half = layer_arrays_numpy([layer], 2.0, np.float64)
    assert float(half["in_row_bytes"][0]) == 12 * 3 * 2 and float(half["out_row_bytes"][0]) == 5 * 8 * 2
    assert float(layer_arrays([layer]).in_row_bytes[0]) == 12 * 3 * 4


def test_layer_arrays_keep_the_dtype_asked_for():
    layers = [Layer("linear", 4, 2)]
    assert layer_arrays(layers).row_work.dtype == jnp.float32  # the default float without x64
    with enable_x64():
        assert layer_arrays(layers).row_work.dtype == jnp.float64
        # an explicit dtype wins over the default float (float32 tables under x64, e.g. the kernel's)
        assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(layer_arrays(layers, dtype=jnp.float32)))


def test_allocation_rates_by_hand():
    # a local device, a remote one with half its capacity, and one with no share (costs 0, never NaN)
    with enable_x64():
        cl = Cluster.create([2e9, 4e9, 1e9], [np.inf, 1e6, 1e6], [0.0, 1e-3, 2e-3], dtype=jnp.float64)
        rates = allocation_rates(cl, jnp.asarray([1.0, 0.5, 0.0], jnp.float64))
        got = {k: np.asarray(getattr(rates, k)).tolist() for k in ("active", "sec_per_flop", "sec_per_byte", "message")}
    assert got == {"active": [True, True, False], "sec_per_flop": [1 / 2e9, 1 / 2e9, 0.0],
                   "sec_per_byte": [0.0, 1 / 5e5, 0.0], "message": [0.0, 2e-3, 4e-3]}


@pytest.mark.slow
def test_request_latency_is_the_sum_of_unmasked_layer_latencies():
    """A request's latency against the reference layer by layer: each layer its own split, padded
    layers (mask False) counting nothing, the bytes per element (default 4) reaching every layer."""
    rng = np.random.default_rng(11)
    with enable_x64():
        for _ in range(12):
            n, depth = int(rng.integers(1, 5)), int(rng.integers(1, 6))
            layers = [sampling.random_layer(rng, 40, 16) for _ in range(depth)]
            f, b, t, a = sampling.random_cluster(rng, n)
            rows = np.stack([random_rows(rng, layer.out_height, a) for layer in layers])
            mask = rng.random(depth) < 0.6
            q = 4.0 if rng.random() < 0.5 else 2.0
            la = layer_arrays(layers, dtype=jnp.float64) if q == 4.0 else layer_arrays(layers, q, jnp.float64)
            cl = Cluster.create(f, b, t, dtype=jnp.float64)
            per = [reference.layer_latency(layer, list(zip(f, b, t)), a, r, q) for layer, r in zip(layers, rows)]
            full = float(request_latency(la, cl, jnp.asarray(a), jnp.asarray(rows)))
            masked = float(request_latency(la, cl, jnp.asarray(a), jnp.asarray(rows), jnp.asarray(mask)))
            assert full == pytest.approx(sum(per), rel=1e-12)
            assert masked == pytest.approx(sum(p for p, m in zip(per, mask) if m), rel=1e-12)
