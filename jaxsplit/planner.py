"""Plans: fused segments, channel splits and the best plan by dynamic programming (MODEL.md section 7).

A *plan* cuts a layer table into contiguous segments and gives each one a partition and an integer
split; its latency is the sum of the segments' latencies. The planner knows three kinds of
*candidate* segment:

* a single layer split by output rows: exactly section 3 (:func:`jaxsplit.latency.segment_time`,
  split by :mod:`jaxsplit.solvers`), so the per-layer plan is one plan among the others;
* a single conv (groups 1) or linear layer split by output channels;
* a fused run of two or more row-local layers [a, b) between two cut points
  (:mod:`jaxsplit.graph`), split by the rows of its output: each device's rows are projected back
  through the run's graph (the hull where several consumers read a tensor).

:class:`Planner` tables every candidate of one model on the host (numpy, once); its methods are pure
JAX functions of one cluster and one allocation, written for one instance and batched with
``jax.vmap`` (clusters and shares vmapped, the model fixed; shapes are static, so a jitted planner
never recompiles for a new cluster or allocation). The best segmentation is a shortest path over the
positions 0..L: ``best[b] = min over candidates [a, b) of best[a] + latency``.

Split rules inside a segment (``rule``): ``closed_form`` (the affine model of section 7 extended
from section 4, water-filled with border intercepts and rounded, then evaluated exactly),
``exact`` (bisection on the latency with a greedy pass: exact for a fixed partition, since a
device's time depends only on its own range and grows with it), and the peers' ``proportional``
(rows proportional to compute, AOFL) and ``equal`` (DeepThings) rules, rows only.

Units: seconds, bytes, FLOP, FLOP/s, bytes/s.

>>> import jax.numpy as jnp
>>> from jaxsplit import planner, zoo
>>> from jaxsplit.latency import Cluster
>>> p = planner.Planner(zoo.get("vgg16"))
>>> cluster = Cluster.create(flops=[2e10, 5e10, 5e10], bandwidth=[jnp.inf, 1.25e8, 1.25e8],
...                          latency=[0.0, 2e-3, 2e-3])
>>> result = p.best_plan(cluster, jnp.ones(3))          # PlanResult: latency (s), covering, splits
>>> bool(result.latency <= p.layer_plan(cluster, jnp.ones(3)).latency)
True
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .graph import MODEL_INPUT, Graph, graph_of
from .latency import Cluster, LayerArrays, Rates, allocation_rates, layer_arrays_numpy, segment_time
from .layers import Layer
# the plans' constants and the closed forms, importable from here as well
from .plan_search import CHANNELS, FUSED, PARTITIONS, PLANS, ROWS, PlanResult, PlanSearch  # noqa: F401
from .plan_splits import SEGMENT_RULES, SegmentSplits, channel_times, channels_closed_form  # noqa: F401
from .plan_splits import run_affine, runs_closed_form  # noqa: F401

@struct.dataclass
class PlanArrays:
    """The numbers of a :class:`Planner`'s tables (a pytree): two models of one graph and one set of
    layer kinds differ only here, so one compiled planner serves both (pass them to
    :meth:`Planner.with_arrays` inside ``jit``).

    Attributes:
      layers: :class:`~jaxsplit.latency.LayerArrays` (L,), section 3's constants.
      ch: channel splits, (L,) each: ``in_bytes`` H W C_in q, ``out_bytes`` H_out W_out q (one
        channel), ``work`` phi_c (FLOP per channel), ``total`` C_out.
      channel_ok: (L,) bool, layers that may be split by channels (conv with groups 1, linear).
      runs: fused runs, (S,) each: ``in_bytes`` and ``out_bytes`` (one row of the run's input and
        output tensors), ``out_height``, and the affine model (:func:`_affine_run`).
      geo: per bucket of runs of similar length, (D, S_bucket) the geometry of the layer at each depth
        from each run's end: ``row_work``, ``stride``, ``pad_top``, ``kernel_extent``, ``in_height``.
    """

    layers: LayerArrays
    ch: dict
    channel_ok: jax.Array
    runs: dict
    geo: list


@dataclasses.dataclass(frozen=True)
class _Run:
    """A fused run [start, end) of two or more layers (host description)."""

    start: int
    end: int
    input_set: tuple[int, ...]
    output_set: tuple[int, ...]


def _affine_run(layers: Sequence[Layer], graph: Graph, run: _Run) -> dict[str, float]:
    """The affine model of a fused run (MODEL.md section 7): rows of every layer's output needed by
    an output range [r, r + n) are ``[S r - e, S (r + n) + d)`` before clamping at the borders, with S
    the product of strides down to the run's output; e and d accumulate the padding and halos (the
    hull over several consumers takes the widest). Returns the run's input rows and its work as
    ``n * S + h`` for an interior device, the first device (start 0) and the last (end at H_out)."""
    s_of: dict[int, float] = {}
    e_of: dict[int, float] = {}
    d_of: dict[int, float] = {}
    out_h = float(_set_shape(layers, run.output_set)[1])
    members = range(run.start, run.end)

    def merge(j: int, s: float, e: float, d: float) -> None:
        s_of[j] = max(s_of.get(j, 0.0), s)
        e_of[j] = max(e_of.get(j, -math.inf), e)
        d_of[j] = max(d_of.get(j, -math.inf), d)

    for j in run.output_set:
        merge(j, 1.0, 0.0, 0.0)
    work = {"interior": [0.0, 0.0], "first": [0.0, 0.0], "last": [0.0, 0.0]}
    for layer_index in reversed(members):
        if layer_index not in s_of:
            continue
        layer = layers[layer_index]
        s, e, d = s_of[layer_index], e_of[layer_index], d_of[layer_index]
        height = float(layer.out_height)
        for key, h in (("interior", d + e), ("first", d), ("last", min(d + e, height - s * out_h + e))):
            work[key][0] += layer.row_work * s
            work[key][1] += layer.row_work * h
        st, pad, keff = layer.stride[0], layer.padding[0], layer.kernel_extent[0]
        for j in graph.preds[layer_index]:
            merge(j, s * st, e * st + pad, (d - 1.0) * st - pad + keff)
    # the run's input: every tensor read from before the run is part of the one live tensor
    ins = [j for j in s_of if j < run.start]
    s = max(s_of[j] for j in ins)
    e = max(e_of[j] for j in ins)
    d = max(d_of[j] for j in ins)
    in_h = float(_set_shape(layers, run.input_set)[1])
    return {"in_s": s, "in_h": d + e, "in_h_first": d, "in_h_last": min(d + e, in_h - s * out_h + e),
            "w1": work["interior"][0], "w0": work["interior"][1], "w0_first": work["first"][1],
            "w0_last": work["last"][1]}


def _set_shape(layers: Sequence[Layer], tensors: tuple[int, ...], channels: int | None = None) -> tuple[int, int, int]:
    """(C, H, W) of the tensor held at a cut: one layer's output or a costless combination. Its
    channels are ``channels`` when given (what the layer reading it takes in: a sum keeps the
    channels, a concatenation adds them), else a sum when all channels agree, else a concatenation."""
    if tensors == (MODEL_INPUT,):
        first = layers[0]
        return first.in_channels, first.in_height, first.in_width
    shapes = [layers[j].output_shape if j != MODEL_INPUT else (layers[0].in_channels, layers[0].in_height,
                                                                 layers[0].in_width) for j in tensors]
    if channels is not None:
        return channels, shapes[0][1], shapes[0][2]
    found = {c for c, _, _ in shapes}
    c = shapes[0][0] if len(found) == 1 else sum(c for c, _, _ in shapes)
    return c, shapes[0][1], shapes[0][2]


def fused_runs(layers: Sequence[Layer], graph: Graph) -> list[_Run]:
    """Every fused run of two or more row-local layers between two cut points, ordered by length,
    then end, then start (the order of the planner's run candidates: runs of similar length are
    evaluated together)."""
    runs = []
    for bi, b in enumerate(graph.cuts):
        for ai, a in enumerate(graph.cuts[:bi]):
            if b - a < 2 or any(layers[j].kind == "linear" for j in range(a, b)):
                continue
            runs.append(_Run(a, b, graph.live[ai], graph.live[bi]))
    return sorted(runs, key=lambda run: (run.end - run.start, run.end, run.start))


def _length_buckets(lengths: Sequence[int]) -> list[tuple[int, int]]:
    """(first run, end run) of each bucket of runs, cut where the length grows 1.5x (runs in order)."""
    buckets: list[tuple[int, int]] = []
    first = 0
    for k in range(1, len(lengths) + 1):
        if k == len(lengths) or lengths[k] > max(lengths[first] * 1.5, lengths[first] + 1):
            buckets.append((first, k))
            first = k
    return buckets


def _assign_slots(run: _Run, graph: Graph) -> tuple[dict[int, int], list[tuple[int, int, list[int], bool]], int, int]:
    """Slots of one run's tensors, assigned like registers from the run's end back to its start.

    Returns the slots holding the output rows at the start ({tensor: slot}), one step per layer from
    the last (layer, slot it reads, slots it writes, whether it reads the run's input), the slots
    used and the most writes of one step."""
    slot: dict[int, int] = {}
    free: list[int] = []
    used = 0

    def take() -> int:
        nonlocal used
        if free:
            return free.pop()
        used += 1
        return used - 1

    for j in sorted(run.output_set):
        if j >= run.start:
            slot[j] = take()
    init = dict(slot)
    steps, fan = [], 1
    for layer_index in range(run.end - 1, run.start - 1, -1):
        read = slot.pop(layer_index)
        free.append(read)
        writes = []
        for j in graph.preds[layer_index]:
            if j >= run.start:
                if j not in slot:
                    slot[j] = take()
                writes.append(slot[j])
        fan = max(fan, len(writes))
        steps.append((layer_index, read, writes, min(graph.preds[layer_index]) < run.start))
    return init, steps, used, fan


def _bucket_table(runs: Sequence[_Run], plans: Sequence[tuple], geometry: dict[str, np.ndarray], width: int,
                  fan: int, first: int, end: int) -> dict[str, Any]:
    """The scan table of one bucket of runs (columns ``first:end``), as :func:`fused_run_times` reads
    it; ``plans`` from :func:`_assign_slots`, ``geometry`` the layers' numpy columns."""
    depth = max(run.end - run.start for run in runs)
    cols = len(runs)
    geo = {k: np.zeros((depth, cols)) for k in ("row_work", "stride", "pad_top", "kernel_extent", "in_height")}
    geo["stride"][:] = 1.0
    valid = np.zeros((depth, cols), bool)
    read = np.zeros((depth, cols), np.int32)
    writes = np.full((depth, fan, cols), -1, np.int32)
    reads_in = np.zeros((depth, cols), bool)
    init = np.zeros((width, cols), bool)
    before = np.zeros(cols, bool)
    for c, (run, (slots, steps, _, _)) in enumerate(zip(runs, plans)):
        before[c] = min(run.output_set) < run.start
        for w in slots.values():
            init[w, c] = True
        for k, (layer_index, r, ws, from_input) in enumerate(steps):
            valid[k, c] = True
            for name in geo:
                geo[name][k, c] = geometry[name][layer_index]
            read[k, c] = r
            writes[k, :len(ws), c] = ws
            reads_in[k, c] = from_input
    return {"first": first, "end": end, "geo": geo, "valid": valid, "read": read, "writes": writes,
            "reads_in": reads_in, "init": init, "before": before}


def _channel_ok(layer: Layer) -> bool:
    return layer.kind == "linear" or (layer.kind == "conv" and layer.groups == 1)


def fused_run_times(table: dict, slots: int, rates: Rates, start: jax.Array, rows: jax.Array) -> jax.Array:
    """T_i of every device on fused runs (MODEL.md section 7), seconds, shape (N, S).

    ``table`` (from :meth:`Planner.run_table` or a bucket of one) describes each run column by
    column: per depth d from the run's end (D steps) the geometry of the layer there (``geo``:
    ``row_work``, ``stride``, ``pad_top``, ``kernel_extent``, ``in_height``, (D, S)), ``valid``, the
    slot it reads its need from (``read``), the slots its projected need is merged into
    (``writes`` (D, F, S), -1 none), whether it reads the run's input (``reads_in``); the slots that
    start with the output rows (``init`` (W, S)); whether the output holds the run's input itself
    (``before``, an identity shortcut); and the bytes of one row of the run's input and output.
    ``start``, ``rows`` (N, S): each device's first output row and row count; ``rates`` (N,).

    The rows are projected back from the run's last layer to its first, clamped to every tensor's
    height; a tensor read by several layers needs the hull of their needs (its slot collects them)."""
    dt = rates.sec_per_flop.dtype
    rates = jax.tree.map(lambda x: jnp.reshape(x, (x.shape[0], 1)), rates)
    inf = jnp.asarray(jnp.inf, dt)
    slot_ids = jnp.arange(slots)[:, None]
    r0 = start.astype(dt)
    n = rows.astype(dt)
    r1 = r0 + n
    lo_in = jnp.where(table["before"], r0, inf)
    hi_in = jnp.where(table["before"], r1, -inf)
    init = jnp.asarray(table["init"])[:, None, :]
    slots_lo = jnp.where(init, r0[None], inf)
    slots_hi = jnp.where(init, r1[None], -inf)
    writes = jnp.asarray(table["writes"])
    xs = (table["geo"], jnp.asarray(table["valid"]), jnp.asarray(table["read"])[:, None, :] == slot_ids[None],
          [writes[:, f, :][:, None, :] == slot_ids[None] for f in range(writes.shape[1])],
          jnp.asarray(table["reads_in"]))

    def step(carry, x):
        slots_lo, slots_hi, work, lo_in, hi_in = carry
        g, valid, read, writes, reads_in = x
        mask = read[:, None, :]  # (W, 1, S)
        lo = jnp.min(jnp.where(mask, slots_lo, inf), axis=0)
        hi = jnp.max(jnp.where(mask, slots_hi, -inf), axis=0)
        slots_lo = jnp.where(mask, inf, slots_lo)
        slots_hi = jnp.where(mask, -inf, slots_hi)
        computed = jnp.where(valid, jnp.maximum(hi - lo, 0.0), 0.0)
        work = work + computed * g["row_work"]
        some = computed > 0
        plo = jnp.where(some, jnp.minimum(jnp.maximum(0.0, lo * g["stride"] - g["pad_top"]), g["in_height"]), inf)
        phi = jnp.where(some, jnp.minimum(g["in_height"], (hi - 1.0) * g["stride"] - g["pad_top"]
                                          + g["kernel_extent"]), -inf)
        for w in writes:
            w = w[:, None, :]
            slots_lo = jnp.where(w, jnp.minimum(slots_lo, plo[None]), slots_lo)
            slots_hi = jnp.where(w, jnp.maximum(slots_hi, phi[None]), slots_hi)
        lo_in = jnp.where(reads_in, jnp.minimum(lo_in, plo), lo_in)
        hi_in = jnp.where(reads_in, jnp.maximum(hi_in, phi), hi_in)
        return (slots_lo, slots_hi, work, lo_in, hi_in), None

    init_carry = (slots_lo, slots_hi, jnp.zeros_like(r0), lo_in, hi_in)
    (_, _, work, lo_in, hi_in), _ = jax.lax.scan(step, init_carry, xs)
    read_rows = jnp.maximum(hi_in - lo_in, 0.0)
    t = (rates.message + (read_rows * table["in_bytes"] + n * table["out_bytes"]) * rates.sec_per_byte
         + work * rates.sec_per_flop)
    return jnp.where(n > 0, t, 0.0)


class Planner(SegmentSplits, PlanSearch):
    """The candidate segments of one model's plans, tabled on the host; plans as pure JAX functions.

    Args:
      layers: the layer table (its graph from ``Layer.inputs``, :mod:`jaxsplit.graph`).
      bytes_per_element: q, bytes per transferred element.
      dtype: the float type of the tables (float32 by default, float64 under x64).

    Every method takes ``cluster`` (fields (N,)) and ``share`` (N,) of one instance; vmap them for
    a batch (``jax.vmap(planner.best_plan)``).
    """

    def __init__(self, layers: Sequence[Layer], bytes_per_element: float = 4.0, dtype: Any = None) -> None:
        self.layers = tuple(layers)
        self.graph = graph_of(self.layers)
        self.q = float(bytes_per_element)
        self.dtype = dtype or jnp.result_type(float)
        count = len(self.layers)
        self.num_layers = count
        self.runs = fused_runs(self.layers, self.graph)
        cols = layer_arrays_numpy(self.layers, self.q, np.float64)
        self._np = cols
        layer_arrays = LayerArrays(**{k: jnp.asarray(v, self.dtype) for k, v in cols.items()})
        channel_ok = np.array([_channel_ok(layer) for layer in self.layers])
        self.channel_ok_host = channel_ok
        q = self.q
        ch = {"in_bytes": [], "out_bytes": [], "work": [], "total": []}
        for layer in self.layers:
            ch["in_bytes"].append(layer.in_height * layer.in_width * layer.in_channels * q)
            ch["out_bytes"].append(layer.out_height * layer.out_width * q)
            ch["work"].append(2.0 * layer.out_height * layer.out_width * (layer.in_channels // layer.groups)
                              * layer.kernel[0] * layer.kernel[1])
            ch["total"].append(layer.out_channels)
        self._ch = {k: np.asarray(v, np.float64) for k, v in ch.items()}
        # fused runs: geometry of their input and output tensors and their affine models
        runs = {k: [] for k in ("start", "end", "in_bytes", "out_bytes", "out_height", "in_s", "in_h", "in_h_first",
                                "in_h_last", "w1", "w0", "w0_first", "w0_last")}
        for run in self.runs:
            c_in, _, w_in = _set_shape(self.layers, run.input_set, self._reader_channels(run.start))
            c_out, h_out, w_out = _set_shape(self.layers, run.output_set, self._reader_channels(run.end))
            runs["start"].append(run.start)
            runs["end"].append(run.end)
            runs["in_bytes"].append(w_in * c_in * q)
            runs["out_bytes"].append(w_out * c_out * q)
            runs["out_height"].append(h_out)
            for k, v in _affine_run(self.layers, self.graph, run).items():
                runs[k].append(v)
        self._runs = {k: np.asarray(v, np.float64) for k, v in runs.items()}
        self.num_runs = len(self.runs)
        self.num_candidates = 2 * count + self.num_runs
        starts = np.concatenate([np.arange(count), np.arange(count), self._runs["start"]]).astype(np.int32)
        ends = np.concatenate([np.arange(1, count + 1), np.arange(1, count + 1), self._runs["end"]]).astype(np.int32)
        self.candidate_start, self.candidate_end = starts, ends
        self.candidate_kind = np.concatenate([np.full(count, ROWS), np.full(count, CHANNELS),
                                              np.full(self.num_runs, FUSED)]).astype(np.int32)
        self._table_runs_by_depth()
        numeric = ("in_bytes", "out_bytes", "out_height", "in_s", "in_h", "in_h_first", "in_h_last", "w1", "w0",
                   "w0_first", "w0_last")
        self.arrays = PlanArrays(
            layers=layer_arrays, ch={k: self._const(v) for k, v in self._ch.items()},
            channel_ok=jnp.asarray(channel_ok),
            runs={k: self._const(self._runs[k]) for k in numeric},
            geo=[{k: self._const(v) for k, v in tab["geo"].items()} for tab in self._buckets])
        # Bisection steps on a run's row count: at least 8 so that tables of any height up to 127 share
        # one program (with_arrays).
        self._row_steps = max(8, int(np.ceil(np.log2(float(self._runs["out_height"].max(initial=1)) + 1.0))) + 1)
        self.structure = (self.graph.preds, tuple(layer.kind == "linear" for layer in self.layers), self._row_steps,
                          str(jnp.dtype(self.dtype)))

    @property
    def layer_arrays(self) -> LayerArrays:
        """Section 3's constants of the layers, (L,)."""
        return self.arrays.layers

    def with_arrays(self, arrays: PlanArrays) -> "Planner":
        """This planner reading ``arrays`` (another model's :attr:`arrays` of the same
        :attr:`structure`, or traced ones inside ``jit``) instead of its own."""
        other = copy.copy(self)
        other.arrays = arrays
        return other

    # ------------------------------------------------------------------ host helpers
    def _reader_channels(self, position: int) -> int | None:
        """Channels of the tensor held at cut ``position``, as the layer there reads it (None at the
        end of the table, or where a linear layer reads it through global pooling)."""
        if position >= self.num_layers or self.layers[position].kind == "linear":
            return None
        return self.layers[position].in_channels

    def _const(self, a: np.ndarray) -> jax.Array:
        return jnp.asarray(a, self.dtype)

    def describe(self, candidate: int) -> tuple[int, int, str]:
        """(first layer, end layer, partition) of candidate ``candidate`` (half-open range)."""
        return (int(self.candidate_start[candidate]), int(self.candidate_end[candidate]),
                "channels" if self.candidate_kind[candidate] == CHANNELS else "rows")

    def segments(self, result: PlanResult, num_devices: int | None = None) -> list[dict[str, Any]]:
        """The plan of one (unbatched) :class:`PlanResult` as MODEL.md section 7's JSON segments:
        ``{"layers": [first, end], "partition": ..., "split": [...], "latency": s}``."""
        covering = np.asarray(result.covering)
        splits = np.asarray(result.splits)
        lat = np.asarray(result.latencies, np.float64)
        out, at = [], 0
        while at < self.num_layers:
            c = int(covering[at])
            a, b, partition = self.describe(c)
            split = splits[c] if num_devices is None else splits[c][:num_devices]
            out.append({"layers": [a, b], "partition": partition, "split": [int(v) for v in split],
                        "latency": float(lat[c])})
            at = b
        return out

    # ------------------------------------------------------------------ exact times
    def _table_runs_by_depth(self) -> None:
        """Per (run, depth from the run's end) constants for :meth:`run_times`' scans.

        Runs are evaluated in buckets of similar length (each a scan over the depth, so a short run
        costs few steps). The needs of the tensors inside a run are kept in a few *slots*: a
        tensor's slot collects the hull of its consumers' needs and is read (and freed) when the
        scan reaches the layer that produces it; slots are assigned on the host like registers,
        so the scan body selects among W slots with masks, never gathering."""
        lengths = [run.end - run.start for run in self.runs]
        plans = [_assign_slots(run, self.graph) for run in self.runs]
        width = max([1] + [used for _, _, used, _ in plans])
        fan = max([1] + [f for _, _, _, f in plans])
        self._buckets = [_bucket_table(self.runs[first:end], plans[first:end], self._np, width, fan, first, end)
                         for first, end in _length_buckets(lengths)]
        self._slots = width
        self._fan = fan
        self._depth_max = max(lengths, default=1)

    def run_times(self, rates: Rates, start: jax.Array, rows: jax.Array) -> jax.Array:
        """T_i of every device on every fused run (MODEL.md section 7), seconds, shape (N, S).

        ``rates`` fields (N,) (or (N, 1)); ``start`` and ``rows`` (N, S): each device's first output
        row of the run and its row count (:func:`fused_run_times`, one bucket of runs at a time)."""
        if not self.num_runs:
            return jnp.zeros((start.shape[0], 0), self.dtype)
        times = []
        for tab, geo in zip(self._buckets, self.arrays.geo):
            cols = slice(tab["first"], tab["end"])
            table = dict(tab, geo=geo, in_bytes=self.arrays.runs["in_bytes"][cols],
                         out_bytes=self.arrays.runs["out_bytes"][cols])
            times.append(fused_run_times(table, self._slots, rates, start[:, cols], rows[:, cols]))
        return jnp.concatenate(times, axis=1)

    def run_table(self, depth: int, slots: int, fan: int) -> dict[str, np.ndarray]:
        """Every run's scan table padded to ``depth`` steps, ``slots`` slots and ``fan`` writes (at
        least this planner's), as :func:`fused_run_times` reads it, columns in run order (S,)."""
        width = self.num_runs
        out = {"geo": {k: np.zeros((depth, width)) for k in ("row_work", "stride", "pad_top", "kernel_extent",
                                                              "in_height")},
               "valid": np.zeros((depth, width), bool), "read": np.zeros((depth, width), np.int32),
               "writes": np.full((depth, fan, width), -1, np.int32), "reads_in": np.zeros((depth, width), bool),
               "init": np.zeros((slots, width), bool), "before": np.zeros(width, bool)}
        out["geo"]["stride"][:] = 1.0
        for tab in self._buckets:
            cols = slice(tab["first"], tab["end"])
            d, f, w = tab["valid"].shape[0], tab["writes"].shape[1], tab["init"].shape[0]
            for k in out["geo"]:
                out["geo"][k][:d, cols] = tab["geo"][k]
            for k in ("valid", "read", "reads_in"):
                out[k][:d, cols] = tab[k]
            out["writes"][:d, :f, cols] = tab["writes"]
            out["init"][:w, cols] = tab["init"]
            out["before"][cols] = tab["before"]
        return out

    def channel_times(self, rates: Rates, channels: jax.Array) -> jax.Array:
        """T_i of every device on every layer split by output channels, seconds, (N, L)
        (:func:`channel_times`); ``channels`` (N, L) int."""
        return channel_times(self.arrays.ch, rates, channels)

    def row_times(self, rates: Rates, rows: jax.Array) -> jax.Array:
        """Section 3's T_i of every device on every layer split by rows, seconds, (N, L); ``rows`` (N, L)."""
        rates = jax.tree.map(lambda x: jnp.reshape(x, (x.shape[0], 1)), rates)
        start = jnp.cumsum(rows, axis=0) - rows
        return segment_time(self.layer_arrays, rates, start, rows)

    def candidate_latencies(self, cluster: Cluster, share: jax.Array, splits: jax.Array,
                            run_latency: jax.Array | None = None) -> jax.Array:
        """Exact latency (s) of every candidate under its split ``splits`` (C, N); (C,).
        ``run_latency`` (S,), when given, is the runs' latencies already computed for these splits."""
        rates = allocation_rates(cluster, share)
        count = self.num_layers
        rows = splits[:count].T
        chans = splits[count:2 * count].T
        runs = splits[2 * count:].T
        start = jnp.cumsum(runs, axis=0) - runs
        parts = [jnp.max(self.row_times(rates, rows), axis=0), jnp.max(self.channel_times(rates, chans), axis=0)]
        if self.num_runs:
            parts.append(run_latency if run_latency is not None else jnp.max(self.run_times(rates, start, runs), axis=0))
        return jnp.concatenate(parts)

