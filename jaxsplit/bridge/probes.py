"""Calibration of a distributed run (:mod:`jaxsplit.bridge.distributed`) as rank 0 drives it: every
rank's FLOP/s, per-class cost samples and core shares, and each link's latency and bandwidth fitted
from ping round trips (MODEL.md's device and link parameters, measured)."""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from . import calibration
from .messages import (RunSpec, _BENCH, _FLOPS, _PING, _SHARE, _TAG_DATA, _TAG_HEADER, _TAG_OUT, _TAG_TIME, _busy,
                       _dtype, _header, _wait, calibrate_flops)

class Probes:
    """The coordinator's calibration commands (a base of :class:`distributed.Coordinator`)."""

    spec: RunSpec

    def ping(self, j: int, elements: int, busy: bool = False) -> float:
        """Round trip with a piece's four messages: ``elements`` to rank j, one element back (s).

        With ``busy``, both ends compute a small convolution in between, as during a layer, so that
        the fitted latency includes waking up a process that computed or waited meanwhile."""
        dtype = _dtype(self.spec.dtype)
        buf, ack, took = torch.zeros(elements, dtype=dtype), torch.zeros(1, dtype=dtype), torch.zeros(1, dtype=torch.float64)
        t0 = time.perf_counter()
        header = _header(_PING, rows=int(busy), size=elements)
        r = dist.irecv(ack, j, tag=_TAG_OUT)
        r2 = dist.irecv(took, j, tag=_TAG_TIME)
        s1, s2 = dist.isend(header, j, tag=_TAG_HEADER), dist.isend(buf, j, tag=_TAG_DATA)
        if busy:
            _busy(dtype)
        _wait(s1, self.spec.timeout, f"coordinator: ping rank {j}")
        _wait(s2, self.spec.timeout, f"coordinator: ping rank {j}")
        _wait(r, self.spec.timeout, f"coordinator: pong from rank {j}")
        _wait(r2, self.spec.timeout, f"coordinator: pong from rank {j}")
        # the worker's compute is not transfer time; ours overlaps the transfer, as in a layer
        return time.perf_counter() - t0 - float(took[0])

    def flops(self) -> list[float]:
        """Every rank's sustained FLOP/s (:func:`calibrate_flops`), all ranks measuring at once.

        Pieces of a split layer run at the same time, so the ranks measure together: where they share
        cores (one machine), the fitted rates include that sharing."""
        header = _header(_FLOPS)
        got = [torch.zeros(1, dtype=torch.float64) for _ in range(self.spec.world_size)]
        recvs = [(dist.irecv(got[j], j, tag=_TAG_OUT), j) for j in range(1, self.spec.world_size)]
        sends = [(dist.isend(header, j, tag=_TAG_HEADER), j) for j in range(1, self.spec.world_size)]
        own = calibrate_flops(_dtype(self.spec.dtype))
        for work, j in sends + recvs:
            _wait(work, self.spec.timeout, f"coordinator: calibrating rank {j}")
        return [own] + [float(g[0]) for g in got[1:]]

    def benchmark(self, j: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Rank j's per-class cost samples (:func:`calibration.benchmark`), the other ranks waiting."""
        if j == 0:
            return calibration.benchmark(self.spec.dtype)
        header = _header(_BENCH)
        count = torch.zeros(1, dtype=torch.int64)
        _wait(dist.isend(header, j, tag=_TAG_HEADER), self.spec.timeout, f"coordinator: benchmark of rank {j}")
        _wait(dist.irecv(count, j, tag=_TAG_OUT), self.spec.timeout, f"coordinator: benchmark of rank {j}")
        flat = torch.zeros(int(count[0]), dtype=torch.float64)
        _wait(dist.irecv(flat, j, tag=_TAG_DATA), self.spec.timeout, f"coordinator: benchmark of rank {j}")
        return calibration.unpack(flat.numpy())

    def core_shares(self, ranks: Sequence[int]) -> list[tuple[float, float]]:
        """(share of a core, time slice) (:func:`calibration.core_share`) of each of ``ranks`` while
        they compute at once."""
        header = _header(_SHARE, rows=len(ranks))
        got = {j: torch.zeros(2, dtype=torch.float64) for j in ranks if j != 0}
        recvs = [(dist.irecv(got[j], j, tag=_TAG_OUT), j) for j in got]
        sends = [(dist.isend(header, j, tag=_TAG_HEADER), j) for j in got]
        own = calibration.core_share(self.spec.dtype) if 0 in ranks else (math.nan, math.nan)
        for work, j in sends + recvs:
            _wait(work, self.spec.timeout, f"coordinator: core share of rank {j}")
        return [own if j == 0 else (float(got[j][0]), float(got[j][1])) for j in ranks]


def calibrate_link(coord: Probes, j: int,
                   sizes: Sequence[int] = (1, 16384, 131072, 524288, 1048576, 2097152),
                   repeats: int = 7, samples: list | None = None) -> tuple[float, float]:
    """Fit rank j's message latency tau (s) and bandwidth B (bytes/s) from ping round trips.

    A round trip of s bytes out and one element back takes 2 tau + s / B (the latency model's
    scatter-gather of one piece without compute); the fit is :func:`calibration.fit_link` on the
    median times. ``samples``, if given, receives the (bytes, seconds) pairs.
    """
    q = torch.empty((), dtype=_dtype(coord.spec.dtype)).element_size()
    for _ in range(2):  # warm the connection and the buffers of the largest message
        coord.ping(j, max(sizes), busy=True)
    xs, ys = [], []
    for s in sizes:
        xs.append(s * q)
        ys.append(float(np.median([coord.ping(j, s, busy=True) for _ in range(repeats)])))
    if samples is not None:
        samples.extend(zip(xs, ys))
    return calibration.fit_link(np.asarray(xs, float), np.asarray(ys))


def _calibrate_sharing(coord: Probes) -> dict[str, Any]:
    """Links (latency, bandwidth, ping samples) and core shares of every rank, alone and in groups."""
    world = coord.spec.world_size
    pings: list[list] = [[] for _ in range(world)]
    links = [calibrate_link(coord, j, samples=pings[j]) for j in range(1, world)]
    return {"pings": pings, "latency": [0.0] + [l[0] for l in links],
            "bandwidth": [math.inf] + [l[1] for l in links],
            "core_share_alone": [coord.core_shares([j])[0] for j in range(world)],
            "core_share": [coord.core_shares(list(range(k))) for k in range(1, world + 1)]}
