"""Ranks 1..N-1 of a distributed run (:mod:`jaxsplit.bridge.distributed`): each waits for the
coordinator's next command, executes it and answers, until told to stop.

Commands of a request: a layer's rows piece, a fused rows segment's piece, a layer's output
channels. Commands of calibration: this rank's FLOP/s, its per-class cost samples, its share of a
core, a ping. Every wait is bounded by the run's timeout (:func:`messages._wait`).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from . import calibration
from .graph import TracedModel
from .messages import (RunSpec, _BENCH, _CHANNELS, _FLOPS, _PING, _SEGMENT, _SHARE, _STOP, _TAG_DATA, _TAG_HEADER,
                       _TAG_OUT, _TAG_TIME, _busy, _channels_shapes, _dtype, _flat, _piece_shapes,
                       _segment_shapes, _unflat, _wait, calibrate_flops)
from .pieces import FusedRun, run_piece
from .segments import run_channels

class _Worker:
    """One worker rank's state: the model, the run's settings and the fused runs built so far."""

    def __init__(self, traced: TracedModel, spec: RunSpec, rank: int) -> None:
        self.traced, self.spec, self.rank = traced, spec, rank
        self.dtype = _dtype(spec.dtype)
        self.runs: dict[tuple[int, int], FusedRun] = {}

    def _send(self, tensor: torch.Tensor, tag: int, what: str) -> None:
        _wait(dist.isend(tensor, 0, tag=tag), self.spec.timeout, f"rank {self.rank}: {what}")

    def _recv(self, tensor: torch.Tensor, tag: int, what: str) -> None:
        _wait(dist.irecv(tensor, 0, tag=tag), self.spec.timeout, f"rank {self.rank}: {what}")

    def _answer(self, compute: Callable[[], torch.Tensor], what: str) -> None:
        """Run ``compute`` (the piece, on tensors already received), send its output and then its
        (wall-clock, CPU) time in seconds."""
        c0, t0 = time.thread_time(), time.perf_counter()
        with torch.no_grad():
            out = compute()
        took = torch.tensor([time.perf_counter() - t0, time.thread_time() - c0], dtype=torch.float64)
        self._send(out, _TAG_OUT, f"sending {what}")
        self._send(took, _TAG_TIME, "sending its time")

    # ---- the commands of a request
    def segment(self, first: int, start: int, rows: int, end: int, batch: int) -> None:
        """A fused rows segment [first, end): one piece, rows [start, start + rows) of its output."""
        if (first, end) not in self.runs:
            self.runs[first, end] = FusedRun.segment(self.traced, first, end)
        run = self.runs[first, end]
        plan = run.plan(start, rows)
        in_shapes, _ = _segment_shapes(self.traced, run, plan, batch)
        flat = torch.empty(sum(int(np.prod(s)) for s in in_shapes), dtype=self.dtype)
        self._recv(flat, _TAG_DATA, f"receiving segment {first}:{end}")

        def compute() -> torch.Tensor:
            got = run.execute_outputs(plan, dict(zip(plan.externals, _unflat(flat, in_shapes))))
            return _flat([got[o] for o in run.outputs])

        self._answer(compute, f"segment {first}:{end}")

    def channels(self, i: int, start: int, count: int, batch: int) -> None:
        """Output channels [start, start + count) of layer i from its whole input."""
        op = self.traced.ops[i]
        x = torch.empty(_channels_shapes(self.traced, op, batch, count)[0], dtype=self.dtype)
        self._recv(x, _TAG_DATA, f"receiving layer {op.layer.name}")
        self._answer(lambda: run_channels(op, self.traced.module(op), x, start, count).contiguous(),
                     f"layer {op.layer.name}")

    def piece(self, i: int, start: int, rows: int, lo: int, hi: int, batch: int) -> None:
        """Output rows [start, start + rows) of layer i from its input rows [lo, hi)."""
        op = self.traced.ops[i]
        x = torch.empty(_piece_shapes(op, batch, lo, hi, rows)[0], dtype=self.dtype)
        self._recv(x, _TAG_DATA, f"receiving layer {op.layer.name}")
        self._answer(lambda: run_piece(op, self.traced.module(op), x, lo, start, rows).contiguous(),
                     f"layer {op.layer.name}")

    # ---- the commands of calibration, each measured while the other ranks wait or compute alike
    def flops(self) -> None:
        self._send(torch.tensor([calibrate_flops(self.dtype)], dtype=torch.float64), _TAG_OUT, "sending its FLOP/s")

    def bench(self) -> None:
        flat = torch.from_numpy(calibration.pack(calibration.benchmark(self.spec.dtype)))
        self._send(torch.tensor([flat.numel()], dtype=torch.int64), _TAG_OUT, "sending its benchmark")
        self._send(flat, _TAG_DATA, "sending its benchmark")

    def share(self) -> None:
        """Share of a core while the ranks named in the command compute at once."""
        self._send(torch.tensor(calibration.core_share(self.spec.dtype), dtype=torch.float64), _TAG_OUT,
                   "sending its core share")

    def ping(self, busy: bool, size: int) -> None:
        """A piece's message pattern: ``size`` elements in, one back, computing in between if ``busy``."""
        buf = torch.empty(size, dtype=self.dtype)
        self._recv(buf, _TAG_DATA, "ping")
        t0 = time.perf_counter()
        if busy:  # compute like a piece does before it answers
            _busy(self.dtype)
        took = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        self._send(buf[:1].clone(), _TAG_OUT, "pong")
        self._send(took, _TAG_TIME, "pong")

    def serve(self) -> None:
        """Execute the coordinator's commands until it says stop."""
        header = torch.zeros(8, dtype=torch.int64)
        while True:
            # Between two layers the coordinator may compute for a while: wait up to the run timeout.
            self._recv(header, _TAG_HEADER, "waiting for the coordinator")
            cmd, i, start, rows, lo, hi, batch, size = (int(v) for v in header)
            if cmd == _STOP:
                return
            if cmd == _FLOPS:
                self.flops()
            elif cmd == _BENCH:
                self.bench()
            elif cmd == _SHARE:
                self.share()
            elif cmd == _PING:
                self.ping(bool(rows), size)
            elif cmd == _SEGMENT:
                self.segment(i, start, rows, lo, batch)
            elif cmd == _CHANNELS:
                self.channels(i, start, rows, batch)
            else:
                self.piece(i, start, rows, lo, hi, batch)


def _worker_loop(traced: TracedModel, spec: RunSpec, rank: int) -> None:
    """Serve rank ``rank``'s pieces of the run ``spec`` until the coordinator stops it."""
    _Worker(traced, spec, rank).serve()
