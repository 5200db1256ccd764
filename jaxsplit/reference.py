"""Plain numpy/Python reference of the latency model and solvers (MODEL.md sections 3 and 4).

Written independently of the JAX code, one instance at a time, in float64, for tests and as the
per-instance peer in benchmarks: exact latency, brute-force enumeration of every integer split, and
the unrefined closed form.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator, Sequence

import numpy as np

from .layers import Layer


def device_time(layer: Layer, flops: float, bandwidth: float, latency: float, share: float,
                start: int, rows: int, q: float = 4.0) -> float:
    """T_i of one device taking output rows [start, start + rows) (MODEL.md section 3); seconds."""
    if rows == 0:
        return 0.0
    lo, hi = layer.input_rows(start, rows)
    read = hi - lo
    in_bytes = read * layer.in_width * layer.in_channels * q
    out_bytes = rows * layer.out_width * layer.out_channels * q
    transfer = 0.0 if math.isinf(bandwidth) else (in_bytes + out_bytes) / (share * bandwidth)
    return 2.0 * latency + transfer + layer.row_work * rows / (share * flops)


def layer_latency(layer: Layer, devices: Sequence[tuple[float, float, float]], shares: Sequence[float],
                  rows: Sequence[int], q: float = 4.0) -> float:
    """max_i T_i for a split; ``devices`` holds (flops, bandwidth, latency) per device."""
    start, worst = 0, 0.0
    for (f, b, tau), a, n in zip(devices, shares, rows):
        if n > 0:
            if a <= 0:
                return math.inf
            worst = max(worst, device_time(layer, f, b, tau, a, start, n, q))
        start += n
    return worst


def compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Every tuple of ``parts`` non-negative integers summing to ``total``."""
    for cuts in itertools.combinations(range(total + parts - 1), parts - 1):
        prev, out = -1, []
        for c in cuts:
            out.append(c - prev - 1)
            prev = c
        out.append(total + parts - 1 - prev - 1)
        yield tuple(out)


def brute_force(layer: Layer, devices: Sequence[tuple[float, float, float]], shares: Sequence[float],
                q: float = 4.0) -> tuple[float, tuple[int, ...]]:
    """Optimal latency and split by enumerating every split (small instances only)."""
    best, arg = math.inf, ()
    for rows in compositions(layer.out_height, len(devices)):
        if any(n > 0 and a <= 0 for n, a in zip(rows, shares)):
            continue
        t = layer_latency(layer, devices, shares, rows, q)
        if t < best:
            best, arg = t, rows
    return best, arg


def closed_form(layer: Layer, devices: Sequence[tuple[float, float, float]], shares: Sequence[float],
                q: float = 4.0) -> np.ndarray:
    """The unrefined closed form of MODEL.md section 4 for one instance, with numpy and a sort."""
    f = np.array([d[0] for d in devices], float)
    b = np.array([d[1] for d in devices], float)
    tau = np.array([d[2] for d in devices], float)
    a = np.asarray(shares, float)
    active = a > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        spb = np.where(active & np.isfinite(b), 1.0 / (a * b), 0.0)
        spf = np.where(active, 1.0 / (a * f), 0.0)
    in_row = layer.in_width * layer.in_channels * q * spb
    out_row = layer.out_width * layer.out_channels * q * spb
    sh, keff = layer.stride[0], layer.kernel_extent[0]
    beta = sh * in_row + out_row + layer.row_work * spf
    alpha = 2 * tau + max(keff - sh, 0) * in_row
    total = layer.out_height
    order = [i for i in np.argsort(alpha, kind="stable") if active[i]]
    best_level, chosen = math.inf, []
    s_aw = s_w = 0.0
    for k, i in enumerate(order):
        s_aw += alpha[i] / beta[i]
        s_w += 1.0 / beta[i]
        level = (total + s_aw) / s_w
        if level < best_level:
            best_level, chosen = level, order[: k + 1]
    n = np.zeros(len(devices))
    for i in chosen:
        n[i] = max(0.0, (best_level - alpha[i]) / beta[i])
    rows = np.floor(n).astype(int)
    for _ in range(total - rows.sum()):
        cost = np.where(active, alpha + beta * (rows + 1), np.inf)
        rows[int(np.argmin(cost))] += 1
    return rows
