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
from .messages import (_CHANNELS, _PIECE, _SEGMENT, _STOP, _TAG_DATA, _TAG_HEADER, _TAG_OUT, _TAG_TIME,
                       RunError, RunSpec, Segment, _channels_shapes, _dtype, _flat, _header, _piece_shapes,
                       _segment_shapes, _unflat, _wait, calibrate_flops)
from .pieces import TOLERANCE, FusedRun, _call, relative_error, run_piece
from .planning import load_model
from .probes import Probes, _calibrate_sharing, calibrate_link
from .segments import check_segments, run_channels
from .workers import _worker_loop

__all__ = ["RunError", "RunSpec", "Segment", "Coordinator", "calibrate_flops", "calibrate_link", "check_port",
           "free_port", "launch_local", "run_rank"]


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


# ------------------------------------------------------------------------------------- coordinator
class Coordinator(Probes):
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
        self._interp = fx.Interpreter(traced.gm)  # reads the graph's constants

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
            header = _header(_PIECE, i, start, n, lo, hi, batch)
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
            header = _header(_SEGMENT, first, start, n, end, batch=b)
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
                header = _header(_CHANNELS, i, start, c, batch=batch)
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

    def _timed(self, plan: int, k: int, work: Callable[[np.ndarray], None]) -> None:
        """Run segment k of ``spec.plans[plan]`` by ``work(compute)`` (compute: its (N,) compute times in s,
        zeroed first) and record its latency."""
        t0 = time.perf_counter()
        self.segment_compute[plan][k][:] = 0.0
        work(self.segment_compute[plan][k])
        self.segment_times[plan][k] = time.perf_counter() - t0

    def _planned_layer(self, plan: int, k: int, i: int, op: LayerOp, env: dict[str, Any]) -> None:
        """Layer i alone as segment k of ``spec.plans[plan]``, split by rows or by output channels."""
        _, _, part, split = self.spec.plans[plan][k]

        def work(compute: np.ndarray) -> None:
            if part == "channels":
                env[op.node] = self._channels(i, op, env[op.input], split, compute)
            else:
                self.compute[i] = 0.0
                env[op.node] = self._layer(i, op, env[op.input], split)
                compute[:] = self.compute[i]

        self._timed(plan, k, work)

    def _fused_starts(self, segments: Sequence[Segment]) -> tuple[dict[str, int], set[str]]:
        """The first graph node of each fused rows segment (to its index in ``segments``) and every node
        a fused segment executes."""
        begins, inside = {}, set()
        for k, (a, b, part, _) in enumerate(segments):
            if part == "rows" and b - a > 1:
                run = self.runs[a, b]
                begins[run.nodes[0].name] = k
                inside |= run.names
        return begins, inside

    def _costless(self, node: fx.Node, kind: str, env: dict[str, Any], x: torch.Tensor) -> None:
        """A node that costs nothing in the model, executed here: the input, a constant, a folded node
        (nothing to do) or any other operation of the graph."""
        if kind == "input":
            env[node.name] = x
        elif kind == "constant":
            env[node.name] = self._interp.fetch_attr(node.target)
        elif kind != "folded":
            sub = lambda a: env[a.name] if isinstance(a, fx.Node) else a  # noqa: E731
            with torch.no_grad():
                env[node.name] = _call(node, self.traced.gm, fx.node.map_aggregate(node.args, sub),
                                       fx.node.map_aggregate(node.kwargs, sub))

    def forward(self, x: torch.Tensor, progress: Callable[[int], None] | None = None,
                plan: int | None = None) -> torch.Tensor:
        """Execute the whole model on ``x`` with the per-layer plan, or with ``spec.plans[plan]``;
        ``progress(i)`` after layer i (after a segment's last layer)."""
        env: dict[str, Any] = {}
        segments = self.spec.plans[plan] if plan is not None else ()
        of_layer = {i: k for k, (a, b, _, _) in enumerate(segments) for i in range(a, b)}
        begins, inside = self._fused_starts(segments)
        for node in self.traced.gm.graph.nodes:
            kind = self.traced.kinds[node.name]
            if node.name in begins:
                a, b, _, split = segments[begins[node.name]]
                self._timed(plan, begins[node.name], lambda compute: self._segment(a, b, split, env, compute))
                done = b - 1
            elif node.name in inside:
                continue
            elif kind == "layer":
                done, op = self.op_by_node[node.name]
                if segments:
                    self._planned_layer(plan, of_layer[done], done, op, env)
                else:
                    env[node.name] = self._layer(done, op, env[op.input])
            elif kind == "output":
                return fx.node.map_aggregate(node.args[0], lambda a: env[a.name] if isinstance(a, fx.Node) else a)
            else:
                self._costless(node, kind, env, x)
                continue
            if progress is not None:
                progress(done)
        raise RunError("the model graph has no output")  # pragma: no cover

    def stop(self) -> None:
        header = _header(_STOP)
        works = [(dist.isend(header, j, tag=_TAG_HEADER), j) for j in range(1, self.spec.world_size)]
        for w, j in works:
            _wait(w, self.spec.timeout, f"coordinator: stopping rank {j}")


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


def _timed_requests(coord: Coordinator, x: torch.Tensor, report: Callable[[tuple], None] | None
                    ) -> dict[str, Any]:
    """``spec.repeats`` timed requests of the per-layer plan and of every plan of ``spec.plans`` (after
    one warm-up request of each), the plans taking turns within each repeat so that a change of the
    machine's load hits all alike. Returns every repeat's times and the last outputs."""
    spec = coord.spec
    coord.forward(x)  # warm-up
    for p in range(len(spec.plans)):
        coord.forward(x, plan=p)
    n_plans = 1 + len(spec.plans)
    layer = {"times": [], "compute": [], "compute_cpu": [], "layer_times": [], "got": None}
    plans: list[dict[str, Any]] = [{"times": [], "segment_times": [], "compute": [], "got": None} for _ in spec.plans]
    for k in range(max(1, spec.repeats)):
        t0 = time.perf_counter()
        layer["got"] = coord.forward(x, (lambda i, k=k: report(("progress", k * n_plans, i))) if report else None)
        layer["times"].append(time.perf_counter() - t0)
        layer["compute"].append(coord.compute.copy())
        layer["compute_cpu"].append(coord.compute_cpu.copy())
        layer["layer_times"].append(coord.times.copy())
        for p, rec in enumerate(plans):
            t0 = time.perf_counter()
            rec["got"] = coord.forward(x, (lambda i, k=k, p=p: report(("progress", k * n_plans + p + 1, i)))
                                       if report else None, plan=p)
            rec["times"].append(time.perf_counter() - t0)
            rec["segment_times"].append(coord.segment_times[p].copy())
            rec["compute"].append(coord.segment_compute[p].copy())
    return {"layer": layer, "plans": plans}


def _summary(spec: RunSpec, traced: TracedModel, runs: dict[str, Any], want: torch.Tensor) -> dict[str, Any]:
    """The result fields of :func:`launch_local` from :func:`_timed_requests`' record (medians over the
    repeats, every repeat kept where the result says so, errors against the unsplit output ``want``)."""
    layer, got = runs["layer"], runs["layer"]["got"]
    return {
        "names": [op.layer.name for op in traced.ops],
        "layer_times": np.median(np.stack(layer["layer_times"]), axis=0).tolist(),
        "compute_times": np.median(np.stack(layer["compute"]), axis=0).tolist(),
        "compute_cpu_times": np.median(np.stack(layer["compute_cpu"]), axis=0).tolist(),
        "layer_times_all": np.stack(layer["layer_times"]).tolist(),
        "request_time": float(np.median(layer["times"])),
        "max_error": relative_error(got, want),
        "tolerance": TOLERANCE[_dtype(spec.dtype)],
        "output_shape": list(got.shape),
        "plans": [{"segments": [[a, b, part, list(split)] for a, b, part, split in spec.plans[p]],
                   "segment_times": np.median(np.stack(rec["segment_times"]), axis=0).tolist(),
                   "segment_times_all": np.stack(rec["segment_times"]).tolist(),
                   "compute_times": np.median(np.stack(rec["compute"]), axis=0).tolist(),
                   "request_time": float(np.median(rec["times"])),
                   "max_error": relative_error(rec["got"], want)}
                  for p, rec in enumerate(runs["plans"])],
    }


def _coordinate(traced: TracedModel, x: torch.Tensor, spec: RunSpec,
                report: Callable[[tuple], None] | None) -> dict[str, Any]:
    """Rank 0's part of a run: calibration if asked (before and after the requests), the timed
    requests, then the workers stopped. Returns :func:`launch_local`'s result."""
    coord = Coordinator(traced, spec)
    result: dict[str, Any] = {"flops": [math.nan] * spec.world_size}
    if spec.calibrate:
        result["flops"] = coord.flops()
        result.update(_calibrate_sharing(coord))
        result["bench"] = [calibration.pack(coord.benchmark(j)).tolist() for j in range(spec.world_size)]
    with torch.no_grad():
        want = traced.gm(x)
    runs = _timed_requests(coord, x, report)
    if spec.calibrate:  # the same again, to see how much the machine changed during the requests
        result["after"] = _calibrate_sharing(coord)
    coord.stop()
    result.update(_summary(spec, traced, runs, want))
    return result


def run_rank(spec: RunSpec, rank: int, master_addr: str, master_port: int,
             report: Callable[[tuple], None] | None = None) -> dict[str, Any] | None:
    """Run one rank. Rank 0 returns the result dict (see :func:`launch_local`); workers return None."""
    torch.set_num_threads(max(1, spec.threads))
    _rendezvous(spec, rank, master_addr, master_port)
    try:
        _check_same_configuration(spec, rank)
        traced, x = _build(spec)
        for t in traced.gm.state_dict().values():  # every rank executes rank 0's weights
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                _wait(dist.broadcast(t, 0, async_op=True), spec.timeout, f"rank {rank}: weight broadcast")
        if rank != 0:
            _worker_loop(traced, spec, rank)
            return None
        return _coordinate(traced, x, spec, report)
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


def _await_result(spec: RunSpec, procs: list, out: Any, budget: float,
                  progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    """Rank 0's result from the queue ``out`` of the started ``procs``, passing progress messages on.

    Raises RunError for a rank's reported error, a rank that died (its own error first where it sent
    one) or a run longer than ``budget`` seconds."""
    limit = time.monotonic() + budget
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
    try:
        return _await_result(spec, procs, out, budget, progress)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
