"""Run split inference for real across processes with ``torch.distributed`` (gloo).

Rank 0 is the coordinator (device 0 of MODEL.md): it holds the input and executes the model graph.
For every layer it scatters each device's input rows (halo included) to that device, computes its
own piece, and gathers the output rows back (MODEL.md section 3's scatter-gather); everything that
costs nothing (BatchNorm, activations, residual adds, global pooling) runs at the coordinator.
Ranks 1..N-1 are workers that execute the pieces they receive. A run may also execute plans of
MODEL.md section 7 (:attr:`RunSpec.plans`): a fused rows segment is one piece per device (its input
rows scattered once, the tensor held at the segment's end gathered once), a channels segment sends
every device the whole input and gathers its output channels. Every process builds the model from
the same :class:`RunSpec`, and rank 0 broadcasts its weights so that all ranks hold the same model.

Every wait has a timeout: a worker that dies or stops answering makes the run fail with
:class:`RunError` naming the rank, instead of hanging. :func:`launch_local` starts all ranks on one
machine (loopback); :func:`run_rank` runs one rank of a multi-machine run (MASTER_ADDR, MASTER_PORT).
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import json
import math
import multiprocessing as mp
import os
import queue
import socket
import threading
import time
import traceback
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.fx as fx

from . import calibration
from .graph import LayerOp, TracedModel, trace
from .pieces import TOLERANCE, FusedRun, _call, relative_error, run_piece
from .segments import check_segments, run_channels
from .planning import load_model

_PIECE, _STOP, _PING, _FLOPS, _BENCH, _SHARE, _SEGMENT, _CHANNELS = 1, 2, 3, 4, 5, 6, 7, 8

#: A segment of a plan as a run carries it: (first, end, partition, split per device).
Segment = tuple[int, int, str, tuple[int, ...]]
_TAG_HEADER, _TAG_DATA, _TAG_OUT, _TAG_TIME = 10, 11, 12, 13


class RunError(RuntimeError):
    """A distributed run failed (a worker died, a wait timed out, the rendezvous failed)."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything a rank needs to build the same model and plan (picklable).

    Attributes:
      model: a zoo name, ``torchvision:NAME`` or ``PATH.py:FACTORY``.
      input_size: (H, W) or None for the model's own.
      rows: (L, N) output rows per device per layer; N is the number of ranks.
      dtype: ``"float32"`` or ``"float64"``.
      seed: seed of the weights and the input.
      timeout: seconds any single wait may take before the run fails.
      repeats: timed runs of the whole request (after one warm-up run).
      threads: torch intra-op threads per process.
      calibrate: also run the calibration microbenchmarks (MODEL.md's one FLOP/s per device, link
        bandwidth and latency, and the per-class cost model of :mod:`jaxsplit.bridge.calibration`).
      plans: further plans (MODEL.md section 7) timed in the same requests as the per-layer plan
        ``rows``, each a tuple of segments ``(first, end, "rows" | "channels", split per device)``
        covering the layers in order.
    """

    model: str
    input_size: tuple[int, int] | None
    rows: tuple[tuple[int, ...], ...]
    dtype: str = "float32"
    seed: int = 0
    timeout: float = 60.0
    repeats: int = 1
    threads: int = 1
    calibrate: bool = False
    plans: tuple[tuple[Segment, ...], ...] = ()

    @property
    def world_size(self) -> int:
        return len(self.rows[0])


def free_port(addr: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``addr`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def check_port(addr: str, port: int) -> None:
    """Raise ValueError if ``port`` cannot be bound on ``addr`` (taken, or not a valid port)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"field 'master_port' must be an integer in 1..65535, got {port!r}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((addr, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ValueError(f"field 'master_port': port {port} on {addr} is taken by another process") from None
            raise ValueError(f"field 'master_addr': cannot bind {addr}:{port}: {err.strerror}") from None


def _wait(work: Any, timeout: float, what: str) -> None:
    try:
        work.wait(timeout=datetime.timedelta(seconds=timeout))
    except RuntimeError as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RunError(f"{what} failed (timeout {timeout:g} s, or the peer died): {msg}") from None


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def _build(spec: RunSpec) -> tuple[TracedModel, torch.Tensor]:
    model, shape = load_model(spec.model, spec.input_size, spec.seed)
    dtype = _dtype(spec.dtype)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(spec.seed), dtype=dtype)
    traced = trace(model.to(dtype), x)
    if len(spec.rows) != len(traced.ops):
        raise ValueError(f"field 'rows' has {len(spec.rows)} layers, the model has {len(traced.ops)}")
    for k, plan in enumerate(spec.plans):
        if any(len(seg[3]) != spec.world_size for seg in plan):
            raise ValueError(f"field 'plans[{k}]': every split must have {spec.world_size} entries (one per rank)")
        check_segments(traced, [{"layers": [a, b], "partition": part, "split": split} for a, b, part, split in plan])
    return traced, x


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One contiguous 1-D tensor of several (one message)."""
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def _unflat(flat: torch.Tensor, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """The tensors of :func:`_flat` back in their shapes."""
    out, at = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[at:at + size].reshape(shape))
        at += size
    return out


def _segment_shapes(traced: TracedModel, run: FusedRun, plan: Any, batch: int
                    ) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Shapes of a fused piece's external inputs (in ``plan.externals`` order) and of its outputs."""
    def rows_shape(name: str) -> tuple[int, ...]:
        _, c, _, w = traced.shapes[name]
        lo, hi = plan.need[name]
        return (batch, c, hi - lo, w)

    return [rows_shape(k) for k in plan.externals], [rows_shape(o) for o in run.outputs]


def _channels_shapes(traced: TracedModel, op: LayerOp, batch: int, count: int
                     ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of a channels piece's input (the whole tensor) and of its ``count`` output channels."""
    if op.kind == "linear":
        return (batch, op.layer.in_channels), (batch, count)
    _, c, h, w = traced.shapes[op.input]
    return (batch, c, h, w), (batch, count, op.layer.out_height, op.layer.out_width)


def _piece_shapes(op: LayerOp, batch: int, lo: int, hi: int, rows: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    layer = op.layer
    if layer.kind == "linear":
        return (batch, layer.in_channels), (batch, layer.out_channels)
    return (batch, layer.in_channels, hi - lo, layer.in_width), (batch, layer.out_channels, rows, layer.out_width)


# ----------------------------------------------------------------------------------------- workers
def _worker_loop(traced: TracedModel, spec: RunSpec, rank: int) -> None:
    dtype = _dtype(spec.dtype)
    header = torch.zeros(8, dtype=torch.int64)
    runs: dict[tuple[int, int], FusedRun] = {}
    while True:
        # Between two layers the coordinator may compute for a while: wait up to the run timeout.
        _wait(dist.irecv(header, 0, tag=_TAG_HEADER), spec.timeout, f"rank {rank}: waiting for the coordinator")
        cmd, i, start, rows, lo, hi, batch, size = (int(v) for v in header)
        if cmd == _STOP:
            return
        if cmd == _FLOPS:  # calibration: this rank's FLOP/s while the others wait
            f = torch.tensor([calibrate_flops(dtype)], dtype=torch.float64)
            _wait(dist.isend(f, 0, tag=_TAG_OUT), spec.timeout, f"rank {rank}: sending its FLOP/s")
            continue
        if cmd == _BENCH:  # calibration: per-class cost samples of this rank while the others wait
            flat = torch.from_numpy(calibration.pack(calibration.benchmark(spec.dtype)))
            _wait(dist.isend(torch.tensor([flat.numel()], dtype=torch.int64), 0, tag=_TAG_OUT), spec.timeout,
                  f"rank {rank}: sending its benchmark")
            _wait(dist.isend(flat, 0, tag=_TAG_DATA), spec.timeout, f"rank {rank}: sending its benchmark")
            continue
        if cmd == _SHARE:  # calibration: share of a core while `rows` ranks compute at once
            f = torch.tensor(calibration.core_share(spec.dtype), dtype=torch.float64)
            _wait(dist.isend(f, 0, tag=_TAG_OUT), spec.timeout, f"rank {rank}: sending its core share")
            continue
        if cmd == _PING:  # calibration: a piece's message pattern with `size` elements out, one back
            buf = torch.empty(size, dtype=dtype)
            _wait(dist.irecv(buf, 0, tag=_TAG_DATA), spec.timeout, f"rank {rank}: ping")
            t0 = time.perf_counter()
            if rows:  # compute like a piece does before it answers
                _busy(dtype)
            took = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            _wait(dist.isend(buf[:1].clone(), 0, tag=_TAG_OUT), spec.timeout, f"rank {rank}: pong")
            _wait(dist.isend(took, 0, tag=_TAG_TIME), spec.timeout, f"rank {rank}: pong")
            continue
        if cmd == _SEGMENT:  # a fused rows segment [i, lo): one piece, rows [start, start + rows) of its output
            if (i, lo) not in runs:
                runs[i, lo] = FusedRun.segment(traced, i, lo)
            run = runs[i, lo]
            plan = run.plan(start, rows)
            in_shapes, _ = _segment_shapes(traced, run, plan, batch)
            flat = torch.empty(sum(int(np.prod(s)) for s in in_shapes), dtype=dtype)
            _wait(dist.irecv(flat, 0, tag=_TAG_DATA), spec.timeout, f"rank {rank}: receiving segment {i}:{lo}")
            c0, t0 = time.thread_time(), time.perf_counter()
            with torch.no_grad():
                got = run.execute_outputs(plan, dict(zip(plan.externals, _unflat(flat, in_shapes))))
                out = _flat([got[o] for o in run.outputs])
            took = torch.tensor([time.perf_counter() - t0, time.thread_time() - c0], dtype=torch.float64)
            _wait(dist.isend(out, 0, tag=_TAG_OUT), spec.timeout, f"rank {rank}: sending segment {i}:{lo}")
            _wait(dist.isend(took, 0, tag=_TAG_TIME), spec.timeout, f"rank {rank}: sending its time")
            continue
        op = traced.ops[i]
        if cmd == _CHANNELS:  # output channels [start, start + rows) of layer i from its whole input
            in_shape, _ = _channels_shapes(traced, op, batch, rows)
            x = torch.empty(in_shape, dtype=dtype)
            _wait(dist.irecv(x, 0, tag=_TAG_DATA), spec.timeout, f"rank {rank}: receiving layer {op.layer.name}")
            c0, t0 = time.thread_time(), time.perf_counter()
            with torch.no_grad():
                out = run_channels(op, traced.module(op), x, start, rows).contiguous()
            took = torch.tensor([time.perf_counter() - t0, time.thread_time() - c0], dtype=torch.float64)
            _wait(dist.isend(out, 0, tag=_TAG_OUT), spec.timeout, f"rank {rank}: sending layer {op.layer.name}")
            _wait(dist.isend(took, 0, tag=_TAG_TIME), spec.timeout, f"rank {rank}: sending its time")
            continue
        in_shape, _ = _piece_shapes(op, batch, lo, hi, rows)
        x = torch.empty(in_shape, dtype=dtype)
        _wait(dist.irecv(x, 0, tag=_TAG_DATA), spec.timeout, f"rank {rank}: receiving layer {op.layer.name}")
        c0, t0 = time.thread_time(), time.perf_counter()
        with torch.no_grad():
            out = run_piece(op, traced.module(op), x, lo, start, rows).contiguous()
        took = torch.tensor([time.perf_counter() - t0, time.thread_time() - c0], dtype=torch.float64)
        _wait(dist.isend(out, 0, tag=_TAG_OUT), spec.timeout, f"rank {rank}: sending layer {op.layer.name}")
        _wait(dist.isend(took, 0, tag=_TAG_TIME), spec.timeout, f"rank {rank}: sending its time")


# ------------------------------------------------------------------------------------- coordinator
class Coordinator:
    """Rank 0: executes the model graph, scattering every layer by its plan rows (or every segment
    of one of :attr:`RunSpec.plans`)."""

    def __init__(self, traced: TracedModel, spec: RunSpec) -> None:
        self.traced, self.spec = traced, spec
        self.rows = np.asarray(spec.rows, np.int64)
        self.op_by_node = {op.node: (i, op) for i, op in enumerate(traced.ops)}
        self.times = np.zeros(len(traced.ops))          # measured layer latency (s)
        self.compute = np.zeros((len(traced.ops), spec.world_size))  # compute time per device (s)
        self.compute_cpu = np.zeros((len(traced.ops), spec.world_size))  # its CPU time (s)
        self.runs = {(a, b): FusedRun.segment(traced, a, b) for plan in spec.plans for a, b, part, _ in plan
                     if part == "rows" and b - a > 1}
        self.segment_times = [np.zeros(len(plan)) for plan in spec.plans]  # measured segment latency (s)
        self.segment_compute = [np.zeros((len(plan), spec.world_size)) for plan in spec.plans]

    def _layer(self, i: int, op: LayerOp, x: torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
        rows = self.rows[i] if rows is None else np.asarray(rows, np.int64)
        timeout = self.spec.timeout
        batch = x.shape[0]
        t0 = time.perf_counter()
        sends, recvs, outs, starts = [], [], {}, np.concatenate([[0], np.cumsum(rows)[:-1]])
        for j in range(1, len(rows)):
            if rows[j] == 0:
                continue
            start, n = int(starts[j]), int(rows[j])
            lo, hi = (0, 1) if op.kind == "linear" else op.layer.input_rows(start, n)
            data = x if op.kind == "linear" else x[:, :, lo:hi]
            header = torch.tensor([_PIECE, i, start, n, lo, hi, batch, 0], dtype=torch.int64)
            sends += [(dist.isend(header, j, tag=_TAG_HEADER), j), (dist.isend(data.contiguous(), j, tag=_TAG_DATA), j)]
            out = torch.empty(_piece_shapes(op, batch, lo, hi, n)[1], dtype=x.dtype)
            took = torch.zeros(2, dtype=torch.float64)
            recvs.append((dist.irecv(out, j, tag=_TAG_OUT), dist.irecv(took, j, tag=_TAG_TIME), j, took))
            outs[j] = out
        if rows[0] > 0:
            c0, cc0 = time.perf_counter(), time.thread_time()
            with torch.no_grad():
                if op.kind == "linear":
                    outs[0] = run_piece(op, self.traced.module(op), x, 0, 0, 1)
                else:
                    lo, hi = op.layer.input_rows(0, int(rows[0]))
                    outs[0] = run_piece(op, self.traced.module(op), x[:, :, lo:hi], lo, 0, int(rows[0]))
            self.compute[i, 0] = time.perf_counter() - c0
            self.compute_cpu[i, 0] = time.thread_time() - cc0
        for work, j in sends:
            _wait(work, timeout, f"coordinator: sending layer {op.layer.name} to rank {j}")
        for out_work, time_work, j, took in recvs:
            _wait(out_work, timeout, f"coordinator: receiving layer {op.layer.name} from rank {j}")
            _wait(time_work, timeout, f"coordinator: receiving the time of rank {j}")
            self.compute[i, j], self.compute_cpu[i, j] = float(took[0]), float(took[1])
        self.times[i] = time.perf_counter() - t0
        if op.kind == "linear":
            return outs[int(np.argmax(rows))]
        return torch.cat([outs[j] for j in sorted(outs)], dim=2)

    def _gather(self, recvs: list, compute: np.ndarray, what: str) -> None:
        """Wait for every piece ``(out work, time work, rank, time tensor)``; each rank's compute time into
        ``compute`` (N,)."""
        for out_work, time_work, j, took in recvs:
            _wait(out_work, self.spec.timeout, f"coordinator: receiving {what} from rank {j}")
            _wait(time_work, self.spec.timeout, f"coordinator: receiving the time of rank {j}")
            compute[j] = float(took[0])

    def _segment(self, first: int, end: int, split: Sequence[int], env: dict[str, Any],
                 compute: np.ndarray) -> None:
        """Rows segment [first, end) as one piece per device (``split`` rows of its output); puts every
        output of the segment into ``env``."""
        run, timeout = self.runs[first, end], self.spec.timeout
        what = f"segment {first}:{end}"
        sends, recvs, outs, start = [], [], {}, 0
        pieces = []
        for j, n in enumerate(split):
            if n:
                pieces.append((j, start, int(n), run.plan(start, int(n))))
            start += int(n)
        own = None
        for j, start, n, plan in pieces:
            ext = [env[k][:, :, plan.need[k][0]:plan.need[k][1]] for k in plan.externals]
            if j == 0:
                own = (plan, ext)
                continue
            b = ext[0].shape[0]
            header = torch.tensor([_SEGMENT, first, start, n, end, 0, b, 0], dtype=torch.int64)
            sends += [(dist.isend(header, j, tag=_TAG_HEADER), j),
                      (dist.isend(_flat(ext).contiguous(), j, tag=_TAG_DATA), j)]
            _, out_shapes = _segment_shapes(self.traced, run, plan, b)
            flat = torch.empty(sum(int(np.prod(s)) for s in out_shapes), dtype=ext[0].dtype)
            took = torch.zeros(2, dtype=torch.float64)
            recvs.append((dist.irecv(flat, j, tag=_TAG_OUT), dist.irecv(took, j, tag=_TAG_TIME), j, took))
            outs[j] = (flat, out_shapes)
        if own is not None:
            t0 = time.perf_counter()
            with torch.no_grad():
                got = run.execute_outputs(own[0], dict(zip(own[0].externals, own[1])))
            outs[0] = [got[o] for o in run.outputs]
            compute[0] = time.perf_counter() - t0
        for work, j in sends:
            _wait(work, timeout, f"coordinator: sending {what} to rank {j}")
        self._gather(recvs, compute, what)
        parts = {j: (v if j == 0 else _unflat(v[0], v[1])) for j, v in outs.items()}
        for k, o in enumerate(run.outputs):
            env[o] = torch.cat([parts[j][k] for j in sorted(parts)], dim=2)

    def _channels(self, i: int, op: LayerOp, x: torch.Tensor, split: Sequence[int], compute: np.ndarray
                  ) -> torch.Tensor:
        """Layer i split by output channels ``split``: every device gets the whole input ``x``."""
        batch, timeout = x.shape[0], self.spec.timeout
        sends, recvs, outs, start = [], [], {}, 0
        data = x.contiguous()
        for j, c in enumerate(split):
            c = int(c)
            if c and j:
                header = torch.tensor([_CHANNELS, i, start, c, 0, 0, batch, 0], dtype=torch.int64)
                sends += [(dist.isend(header, j, tag=_TAG_HEADER), j), (dist.isend(data, j, tag=_TAG_DATA), j)]
                out = torch.empty(_channels_shapes(self.traced, op, batch, c)[1], dtype=x.dtype)
                took = torch.zeros(2, dtype=torch.float64)
                recvs.append((dist.irecv(out, j, tag=_TAG_OUT), dist.irecv(took, j, tag=_TAG_TIME), j, took))
                outs[j] = out
            start += c
        if int(split[0]):
            t0 = time.perf_counter()
            with torch.no_grad():
                outs[0] = run_channels(op, self.traced.module(op), x, 0, int(split[0]))
            compute[0] = time.perf_counter() - t0
        for work, j in sends:
            _wait(work, timeout, f"coordinator: sending layer {op.layer.name} to rank {j}")
        self._gather(recvs, compute, f"layer {op.layer.name}")
        return torch.cat([outs[j] for j in sorted(outs)], dim=1)

    def forward(self, x: torch.Tensor, progress: Callable[[int], None] | None = None,
                plan: int | None = None) -> torch.Tensor:
        """Execute the whole model on ``x`` with the per-layer plan, or with ``spec.plans[plan]``;
        ``progress(i)`` after layer i (after a segment's last layer)."""
        env: dict[str, Any] = {}
        gm = self.traced.gm
        interp = fx.Interpreter(gm)
        segments = self.spec.plans[plan] if plan is not None else ()
        of_layer = {i: k for k, (a, b, _, _) in enumerate(segments) for i in range(a, b)}
        begins, inside = {}, set()
        for k, (a, b, part, _) in enumerate(segments):
            if part == "rows" and b - a > 1:
                run = self.runs[a, b]
                begins[run.nodes[0].name] = k
                inside |= run.names
        for node in gm.graph.nodes:
            kind = self.traced.kinds[node.name]
            if node.name in begins:
                k = begins[node.name]
                a, b, _, split = segments[k]
                t0 = time.perf_counter()
                self.segment_compute[plan][k][:] = 0.0
                self._segment(a, b, split, env, self.segment_compute[plan][k])
                self.segment_times[plan][k] = time.perf_counter() - t0
                if progress is not None:
                    progress(b - 1)
                continue
            if node.name in inside:
                continue
            if kind == "layer" and segments:
                i, op = self.op_by_node[node.name]
                k = of_layer[i]
                _, _, part, split = segments[k]
                t0 = time.perf_counter()
                self.segment_compute[plan][k][:] = 0.0
                if part == "channels":
                    env[node.name] = self._channels(i, op, env[op.input], split, self.segment_compute[plan][k])
                else:
                    self.compute[i] = 0.0
                    env[node.name] = self._layer(i, op, env[op.input], split)
                    self.segment_compute[plan][k][:] = self.compute[i]
                self.segment_times[plan][k] = time.perf_counter() - t0
                if progress is not None:
                    progress(i)
                continue
            if kind == "input":
                env[node.name] = x
            elif kind == "folded":
                continue
            elif kind == "output":
                return fx.node.map_aggregate(node.args[0], lambda a: env[a.name] if isinstance(a, fx.Node) else a)
            elif kind == "constant":
                env[node.name] = interp.fetch_attr(node.target)
            elif kind == "layer":
                i, op = self.op_by_node[node.name]
                env[node.name] = self._layer(i, op, env[op.input])
                if progress is not None:
                    progress(i)
            else:
                sub = lambda a: env[a.name] if isinstance(a, fx.Node) else a  # noqa: E731
                with torch.no_grad():
                    env[node.name] = _call(node, gm, fx.node.map_aggregate(node.args, sub),
                                           fx.node.map_aggregate(node.kwargs, sub))
        raise RunError("the model graph has no output")  # pragma: no cover

    def ping(self, j: int, elements: int, busy: bool = False) -> float:
        """Round trip with a piece's four messages: ``elements`` to rank j, one element back (s).

        With ``busy``, both ends compute a small convolution in between, as during a layer, so that
        the fitted latency includes waking up a process that computed or waited meanwhile."""
        dtype = _dtype(self.spec.dtype)
        buf, ack, took = torch.zeros(elements, dtype=dtype), torch.zeros(1, dtype=dtype), torch.zeros(1, dtype=torch.float64)
        t0 = time.perf_counter()
        header = torch.tensor([_PING, 0, 0, int(busy), 0, 0, 0, elements], dtype=torch.int64)
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
        header = torch.tensor([_FLOPS, 0, 0, 0, 0, 0, 0, 0], dtype=torch.int64)
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
        header = torch.tensor([_BENCH, 0, 0, 0, 0, 0, 0, 0], dtype=torch.int64)
        count = torch.zeros(1, dtype=torch.int64)
        _wait(dist.isend(header, j, tag=_TAG_HEADER), self.spec.timeout, f"coordinator: benchmark of rank {j}")
        _wait(dist.irecv(count, j, tag=_TAG_OUT), self.spec.timeout, f"coordinator: benchmark of rank {j}")
        flat = torch.zeros(int(count[0]), dtype=torch.float64)
        _wait(dist.irecv(flat, j, tag=_TAG_DATA), self.spec.timeout, f"coordinator: benchmark of rank {j}")
        return calibration.unpack(flat.numpy())

    def core_shares(self, ranks: Sequence[int]) -> list[tuple[float, float]]:
        """(share of a core, time slice) (:func:`calibration.core_share`) of each of ``ranks`` while
        they compute at once."""
        header = torch.tensor([_SHARE, 0, 0, len(ranks), 0, 0, 0, 0], dtype=torch.int64)
        got = {j: torch.zeros(2, dtype=torch.float64) for j in ranks if j != 0}
        recvs = [(dist.irecv(got[j], j, tag=_TAG_OUT), j) for j in got]
        sends = [(dist.isend(header, j, tag=_TAG_HEADER), j) for j in got]
        own = calibration.core_share(self.spec.dtype) if 0 in ranks else (math.nan, math.nan)
        for work, j in sends + recvs:
            _wait(work, self.spec.timeout, f"coordinator: core share of rank {j}")
        return [own if j == 0 else (float(got[j][0]), float(got[j][1])) for j in ranks]

    def stop(self) -> None:
        header = torch.tensor([_STOP, 0, 0, 0, 0, 0, 0, 0], dtype=torch.int64)
        works = [(dist.isend(header, j, tag=_TAG_HEADER), j) for j in range(1, self.spec.world_size)]
        for w, j in works:
            _wait(w, self.spec.timeout, f"coordinator: stopping rank {j}")


def calibrate_link(coord: Coordinator, j: int,
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


_BUSY: dict[torch.dtype, tuple[torch.nn.Module, torch.Tensor]] = {}


def _busy(dtype: torch.dtype) -> None:
    """A short convolution (about 20 MFLOP), the compute of a small piece."""
    if dtype not in _BUSY:
        _BUSY[dtype] = (torch.nn.Conv2d(32, 32, 3, padding=1).to(dtype), torch.randn(1, 32, 32, 32, dtype=dtype))
    conv, x = _BUSY[dtype]
    with torch.no_grad():
        conv(x)


def calibrate_flops(dtype: torch.dtype, seconds: float = 0.3) -> float:
    """Sustained FLOP/s of this process on a 3x3 convolution (64 -> 64 channels, 56x56).

    The convolution is repeated for ``seconds`` and the total work is divided by the total time, so
    that time-sharing of the cores with other processes (all ranks calibrate at once) is included.
    """
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(dtype)
    x = torch.randn(1, 64, 56, 56, dtype=dtype)
    flop = 2.0 * 56 * 56 * 64 * 64 * 9
    with torch.no_grad():
        conv(x)
        count, t0 = 0, time.perf_counter()
        while True:
            conv(x)
            count += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return flop * count / elapsed


def _calibrate_sharing(coord: Coordinator) -> dict[str, Any]:
    """Links (latency, bandwidth, ping samples) and core shares of every rank, alone and in groups."""
    world = coord.spec.world_size
    pings: list[list] = [[] for _ in range(world)]
    links = [calibrate_link(coord, j, samples=pings[j]) for j in range(1, world)]
    return {"pings": pings, "latency": [0.0] + [l[0] for l in links],
            "bandwidth": [math.inf] + [l[1] for l in links],
            "core_share_alone": [coord.core_shares([j])[0] for j in range(world)],
            "core_share": [coord.core_shares(list(range(k))) for k in range(1, world + 1)]}


# --------------------------------------------------------------------------------------- one rank
def _rendezvous(spec: RunSpec, rank: int, master_addr: str, master_port: int) -> None:
    """``init_process_group`` bounded by ``spec.timeout``: its own timeout does not cover a client
    that reached a port where something else listens (it waits for a store's answer for ever), so the
    rendezvous runs in a daemon thread and the rank gives up when the thread has not returned."""
    outcome: list[BaseException | None] = []

    def join() -> None:
        try:
            dist.init_process_group("gloo", init_method=f"tcp://{master_addr}:{master_port}", rank=rank,
                                    world_size=spec.world_size, timeout=datetime.timedelta(seconds=spec.timeout))
            outcome.append(None)
        except BaseException as err:  # reported by the caller
            outcome.append(err)

    thread = threading.Thread(target=join, name="rendezvous", daemon=True)
    thread.start()
    thread.join(spec.timeout + 5.0)
    if not outcome:
        raise RunError(f"rank {rank}: rendezvous at {master_addr}:{master_port} did not complete within "
                       f"{spec.timeout:g} s (no coordinator answered there, another program holds the port, "
                       f"or fewer than {spec.world_size} ranks joined)")
    err = outcome[0]
    if err is not None:
        raise RunError(f"rank {rank}: rendezvous at {master_addr}:{master_port} failed: "
                       f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


#: RunSpec fields every rank must share (threads and repeats are per process or rank 0's alone).
SHARED_FIELDS = ("model", "input_size", "rows", "dtype", "seed", "calibrate", "plans")


def _check_same_configuration(spec: RunSpec, rank: int) -> None:
    """Before any tensor moves: rank 0 broadcasts its configuration, every rank compares it with its
    own, and all learn whether some rank differs (RunError naming the fields and both values)."""
    def norm(v: Any) -> Any:
        return json.loads(json.dumps(v))

    mine = {k: norm(getattr(spec, k)) for k in SHARED_FIELDS}
    data = json.dumps(mine, sort_keys=True).encode()
    size = torch.tensor([len(data)], dtype=torch.int64)
    _wait(dist.broadcast(size, 0, async_op=True), spec.timeout, f"rank {rank}: configuration check")
    buf = torch.zeros(int(size.item()), dtype=torch.uint8)
    if rank == 0:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    _wait(dist.broadcast(buf, 0, async_op=True), spec.timeout, f"rank {rank}: configuration check")
    theirs = json.loads(bytes(buf.numpy().tobytes()).decode()) if rank != 0 else mine
    diff = [k for k in SHARED_FIELDS if mine.get(k) != theirs.get(k)]
    flags = torch.zeros(spec.world_size, dtype=torch.int64)
    flags[rank] = 1 if diff else 0
    _wait(dist.all_reduce(flags, async_op=True), spec.timeout, f"rank {rank}: configuration check")
    if diff:
        what = "; ".join(f"{k} = {json.dumps(mine[k])[:120]} here, {json.dumps(theirs.get(k))[:120]} on rank 0"
                         for k in diff)
        raise RunError(f"rank {rank}: its configuration differs from rank 0's: {what}")
    bad = [j for j in range(spec.world_size) if flags[j]]
    if bad:
        raise RunError(f"rank {rank}: rank(s) {', '.join(map(str, bad))} run a different configuration "
                       f"(model, input size, plan, dtype, seed or calibration); each says what differs")


def run_rank(spec: RunSpec, rank: int, master_addr: str, master_port: int,
             report: Callable[[tuple], None] | None = None) -> dict[str, Any] | None:
    """Run one rank. Rank 0 returns the result dict (see :func:`launch_local`); workers return None."""
    torch.set_num_threads(max(1, spec.threads))
    world = spec.world_size
    _rendezvous(spec, rank, master_addr, master_port)
    try:
        _check_same_configuration(spec, rank)
        traced, x = _build(spec)
        for t in traced.gm.state_dict().values():  # every rank executes rank 0's weights
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                _wait(dist.broadcast(t, 0, async_op=True), spec.timeout, f"rank {rank}: weight broadcast")
        dtype = _dtype(spec.dtype)
        if rank != 0:
            _worker_loop(traced, spec, rank)
            return None
        coord = Coordinator(traced, spec)
        result: dict[str, Any] = {"flops": [math.nan] * world}
        if spec.calibrate:
            result["flops"] = coord.flops()
            result.update(_calibrate_sharing(coord))
            result["bench"] = [calibration.pack(coord.benchmark(j)).tolist() for j in range(world)]
        with torch.no_grad():
            want = traced.gm(x)
        coord.forward(x)  # warm-up
        for p in range(len(spec.plans)):
            coord.forward(x, plan=p)
        times, compute, compute_cpu, layer_times = [], [], [], []
        n_plans = 1 + len(spec.plans)
        plan_runs: list[dict[str, list]] = [{"times": [], "segment_times": [], "compute": []} for _ in spec.plans]
        plan_got: list[torch.Tensor] = [want] * len(spec.plans)
        for k in range(max(1, spec.repeats)):
            # the plans take turns within each repeat, so that a change of the machine's load hits all alike
            t0 = time.perf_counter()
            got = coord.forward(x, (lambda i, k=k: report(("progress", k * n_plans, i))) if report else None)
            times.append(time.perf_counter() - t0)
            compute.append(coord.compute.copy())
            compute_cpu.append(coord.compute_cpu.copy())
            layer_times.append(coord.times.copy())
            for p, rec in enumerate(plan_runs):
                t0 = time.perf_counter()
                plan_got[p] = coord.forward(x, (lambda i, k=k, p=p: report(("progress", k * n_plans + p + 1, i)))
                                            if report else None, plan=p)
                rec["times"].append(time.perf_counter() - t0)
                rec["segment_times"].append(coord.segment_times[p].copy())
                rec["compute"].append(coord.segment_compute[p].copy())
        if spec.calibrate:  # the same again, to see how much the machine changed during the requests
            result["after"] = _calibrate_sharing(coord)
        coord.stop()
        result.update({
            "names": [op.layer.name for op in traced.ops],
            "layer_times": np.median(np.stack(layer_times), axis=0).tolist(),
            "compute_times": np.median(np.stack(compute), axis=0).tolist(),
            "compute_cpu_times": np.median(np.stack(compute_cpu), axis=0).tolist(),
            "layer_times_all": np.stack(layer_times).tolist(),
            "request_time": float(np.median(times)),
            "max_error": relative_error(got, want),
            "tolerance": TOLERANCE[dtype],
            "output_shape": list(got.shape),
            "plans": [{"segments": [[a, b, part, list(split)] for a, b, part, split in spec.plans[p]],
                       "segment_times": np.median(np.stack(rec["segment_times"]), axis=0).tolist(),
                       "segment_times_all": np.stack(rec["segment_times"]).tolist(),
                       "compute_times": np.median(np.stack(rec["compute"]), axis=0).tolist(),
                       "request_time": float(np.median(rec["times"])),
                       "max_error": relative_error(plan_got[p], want)}
                      for p, rec in enumerate(plan_runs)],
        })
        return result
    finally:
        dist.destroy_process_group()


def _child(spec: RunSpec, rank: int, addr: str, port: int, out: Any) -> None:
    try:
        res = run_rank(spec, rank, addr, port, report=(lambda m: out.put(m)) if rank == 0 else None)
        if rank == 0:
            out.put(("result", res))
    except BaseException as err:  # report every failure to the parent, then exit non-zero
        msg = f"{type(err).__name__}: {err}" if isinstance(err, (RunError, ValueError)) else traceback.format_exc(limit=3)
        out.put(("error", rank, msg))
        os._exit(1)


def launch_local(spec: RunSpec, master_addr: str = "127.0.0.1", master_port: int = 0,
                 deadline: float | None = None, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Start every rank of ``spec`` as a local process (loopback) and return rank 0's result.

    Returns a dict: ``names``, ``layer_times`` (L,) s (median over the repeats; every repeat in
    ``layer_times_all`` (R, L)), ``compute_times`` (L, N) wall-clock s and ``compute_cpu_times``
    (L, N) CPU s of every piece, ``request_time`` s, ``max_error`` (relative to the unsplit model's
    output), ``tolerance``, ``flops`` (N,), and with ``spec.calibrate`` the fitted ``latency`` and
    ``bandwidth`` (N,), ``bench`` (N packed sample arrays, :func:`calibration.unpack`),
    ``core_share_alone`` (N pairs) every rank's (core share, time slice) computing alone and
    ``core_share`` (N lists: entry k-1 holds those pairs of ranks 0..k-1 computing at once), and in
    ``after`` the links and core shares measured again after the timed requests. ``plans`` holds one
    dict per plan of ``spec.plans``: its ``segments`` ([first, end, partition, split]),
    ``segment_times`` (S,) s (median; every repeat in ``segment_times_all`` (R, S)),
    ``compute_times`` (S, N) wall-clock s of every piece, ``request_time`` s and ``max_error``.
    Raises:
      ValueError: the port is taken.
      RunError: a rank failed or died, or the whole run exceeded ``deadline`` seconds.
    """
    if master_port == 0:
        master_port = free_port(master_addr)
    check_port(master_addr, master_port)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(spec, r, master_addr, master_port, out), daemon=True)
             for r in range(spec.world_size)]
    for p in procs:
        p.start()
    budget = deadline if deadline is not None else 10 * spec.timeout + 60
    limit = time.monotonic() + budget
    try:
        while True:
            try:
                msg = out.get(timeout=0.2)
            except queue.Empty:
                msg = None
            if msg is not None:
                if msg[0] == "result":
                    for p in procs:
                        p.join(timeout=spec.timeout)
                    return msg[1]
                if msg[0] == "error":
                    raise RunError(f"rank {msg[1]} failed: {msg[2]}")
                if msg[0] == "progress" and progress is not None:
                    progress(msg[1], msg[2])
                continue
            dead = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if dead:
                time.sleep(0.5)  # let a rank that reported an error deliver it first
                while True:
                    try:
                        msg = out.get_nowait()
                    except queue.Empty:
                        break
                    if msg[0] == "error":
                        raise RunError(f"rank {msg[1]} failed: {msg[2]}")
                r, code = dead[0]
                raise RunError(f"rank {r} died (exit status {code})")
            if time.monotonic() > limit:
                raise RunError(f"the run did not finish within {budget:g} s")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
