"""Random layers and clusters for tests and benchmarks.

The distributions follow the ranges of the allocation environment's defaults (MODEL.md section 6):
device 0 is the local coordinator; the others have 5 to 100 GFLOP/s, 100 Mbit/s to 2 Gbit/s links
and 0.2 to 5 ms message latency; shares are uniform in [0, 1] with some set to exactly 0.
"""

from __future__ import annotations

import numpy as np

from .latency import Cluster, LayerArrays
from .layers import Layer, output_size


def random_layer(rng: np.random.Generator, max_height: int = 224, max_channels: int = 512) -> Layer:
    """A random valid conv, pool or linear layer (kernel 1-7, stride 1-3, padding 0-3, dilation 1-3)."""
    kind = rng.choice(["conv", "conv", "conv", "maxpool", "avgpool", "linear"])
    if kind == "linear":
        return Layer("linear", int(rng.integers(16, 4096)), int(rng.integers(10, 4096)))
    while True:
        h = int(rng.integers(1, max_height + 1))
        w = int(rng.integers(1, max_height + 1))
        c = int(rng.integers(1, max_channels + 1))
        k = (int(rng.integers(1, 8)), int(rng.integers(1, 8)))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        if kind == "conv":
            d = (int(rng.integers(1, 4)), int(rng.integers(1, 4))) if rng.random() < 0.3 else (1, 1)
            p = tuple(int(v) for v in rng.integers(0, 4, size=4))
            g = int(rng.choice([1, 1, 1, 2, 4, c]))
            cout = int(rng.integers(1, max_channels + 1))
            if c % g:
                g = 1
            cout = max(g, cout // g * g)
            ceil = False
        else:
            d, g, cout = (1, 1), 1, c
            p = tuple(int(min(rng.integers(0, 4), kk // 2)) for kk in (k[0], k[0], k[1], k[1]))
            ceil = bool(rng.random() < 0.3)
        keff_h, keff_w = d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1
        if keff_h > h + p[0] + p[1] or keff_w > w + p[2] + p[3]:
            continue
        if output_size(h, k[0], s[0], p[0], p[1], d[0], ceil) < 1 or output_size(w, k[1], s[1], p[2], p[3], d[1], ceil) < 1:
            continue
        return Layer(kind, c, cout, k, s, p, d, g, ceil, h, w)


def random_cluster(rng: np.random.Generator, num_devices: int, zero_share_prob: float = 0.15,
                   local_coordinator: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random (flops, bandwidth, latency, share), each (N,), float64; at least one positive share."""
    flops = rng.uniform(5e9, 100e9, num_devices)
    bandwidth = rng.uniform(100e6 / 8, 2e9 / 8, num_devices)
    latency = rng.uniform(0.2e-3, 5e-3, num_devices)
    if local_coordinator:
        bandwidth[0] = np.inf
        latency[0] = 0.0
    share = rng.uniform(0.0, 1.0, num_devices)
    share[rng.random(num_devices) < zero_share_prob] = 0.0
    if not np.any(share > 0):
        share[rng.integers(num_devices)] = rng.uniform(0.05, 1.0)
    return flops, bandwidth, latency, share


def random_batch(rng: np.random.Generator, batch: int, num_devices: int, bytes_per_element: float = 4.0,
                 max_height: int = 224, dtype=np.float32) -> tuple[LayerArrays, Cluster, np.ndarray, list[Layer]]:
    """A batch of random layer-instances as arrays: LayerArrays (B,), Cluster (B, N), shares (B, N)."""
    from .latency import layer_arrays_numpy

    layers = [random_layer(rng, max_height) for _ in range(batch)]
    cols = layer_arrays_numpy(layers, bytes_per_element, dtype)
    parts = [random_cluster(rng, num_devices) for _ in range(batch)]
    f, b, t, a = (np.stack([p[i] for p in parts]).astype(dtype) for i in range(4))
    return LayerArrays(**cols), Cluster(f, b, t), a, layers


def random_arrays(rng: np.random.Generator, batch: int, num_devices: int, pool: int = 4096,
                  dtype=np.float32) -> tuple[LayerArrays, Cluster, np.ndarray]:
    """Like :func:`random_batch` but fast for millions of instances: layers are drawn from a pool of
    ``pool`` random layers, clusters are drawn vectorised. Shapes (B,) and (B, N)."""
    from .latency import layer_arrays_numpy

    table = layer_arrays_numpy([random_layer(rng) for _ in range(pool)], 4.0, dtype)
    pick = rng.integers(0, pool, batch)
    layers = LayerArrays(**{k: v[pick] for k, v in table.items()})
    shape = (batch, num_devices)
    flops = rng.uniform(5e9, 100e9, shape)
    bandwidth = rng.uniform(100e6 / 8, 2e9 / 8, shape)
    latency = rng.uniform(0.2e-3, 5e-3, shape)
    bandwidth[:, 0], latency[:, 0] = np.inf, 0.0
    share = rng.uniform(0.0, 1.0, shape)
    share[rng.random(shape) < 0.15] = 0.0
    share[:, 0] = np.where((share > 0).any(1), share[:, 0], 1.0)
    return layers, Cluster(flops.astype(dtype), bandwidth.astype(dtype), latency.astype(dtype)), share.astype(dtype)
