"""Execute row ranges of layers and of fused runs of layers exactly, and prove a split numerically.

A *piece* of a layer is the output rows ``[start, start + rows)`` computed from the input rows
``[lo, hi)`` that MODEL.md section 3 names (halo included, clamped to the image). Padding is applied
only where the piece touches a true image border, with the value the unsplit layer uses there:
zeros for convolutions and folded ``ZeroPad2d``, ``-inf`` for max pooling's own padding, and for
average pooling a divisor that counts exactly what PyTorch counts. Windows that ``ceil_mode`` lets
run past the padded input are handled the same way (ignored by max, not counted by average).

A *fused run* is a contiguous range of layer-table entries (residual blocks included) executed as
one piece per device: it is split by the output rows of its last layer, and the row ranges every
node needs are projected back through the run (growing halos). :func:`split_run` computes them,
executes every piece, stitches the outputs and compares them with the unsplit model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from .graph import LayerOp, TracedModel, UnsupportedModelError

#: Relative tolerance of the numerical proof per dtype (max abs error / max abs of the output).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def _overlap(a: int, b: int, lo: int, hi: int) -> int:
    return max(0, min(b, hi) - max(a, lo))


def _segments(a: int, b: int, n: int, zero: tuple[int, int], own: tuple[int, int]
              ) -> tuple[int, int, tuple[int, int, int], tuple[int, int, int]]:
    """Split the padded range ``[a, b)`` of an axis of length ``n`` (unpadded coordinates).

    Returns the real range ``[r0, r1)`` and, before and after it, the counts of (zero-pad, own pad,
    overflow) positions, ordered outward from the image (the order in which they are padded).
    """
    (zb, za), (ob, oa) = zero, own
    r0 = min(max(a, 0), n)
    r1 = max(r0, min(b, n))
    before = (_overlap(a, b, -zb, 0), _overlap(a, b, -zb - ob, -zb), _overlap(a, b, a, -zb - ob))
    after = (_overlap(a, b, n, n + za), _overlap(a, b, n + za, n + za + oa), _overlap(a, b, n + za + oa, b))
    return r0, r1, before, after


def run_piece(op: LayerOp, module: torch.nn.Module, x: torch.Tensor, lo: int, start: int, rows: int) -> torch.Tensor:
    """Output rows ``[start, start + rows)`` of layer ``op`` from input rows ``[lo, lo + x.shape[2])``.

    Args:
      op: the layer op (its layer gives the geometry).
      module: the module executing it (weights, and for linear layers the whole computation).
      x: (B, C, R, W) input rows starting at row ``lo``; must cover ``op.layer.input_rows(start, rows)``.
      lo: the first input row held in ``x``.
      start, rows: the output rows to compute (``rows >= 1``).
    Returns:
      (B, C_out, rows, W_out), equal to rows ``[start, start + rows)`` of the unsplit layer.
    """
    layer = op.layer
    if layer.kind == "linear":
        return module(x)
    if rows <= 0:
        return x.new_zeros((x.shape[0], layer.out_channels, 0, layer.out_width))
    h, w = layer.in_height, layer.in_width
    (sh, sw), (keh, kew) = layer.stride, layer.kernel_extent
    a = start * sh - layer.padding[0]  # first padded-input row the piece reads (unpadded coordinates)
    b = (start + rows - 1) * sh - layer.padding[0] + keh
    aw = -layer.padding[2]
    bw = (layer.out_width - 1) * sw - layer.padding[2] + kew
    zt, zb, zl, zr = op.zero_pad
    ot, ob, ol, orr = op.own_pad
    r0, r1, top, bottom = _segments(a, b, h, (zt, zb), (ot, ob))
    c0, c1, left, right = _segments(aw, bw, w, (zl, zr), (ol, orr))
    if r1 == r0:  # the piece reads padding only
        r0 = r1 = lo
    if r0 < lo or r1 > lo + x.shape[2]:
        raise ValueError(f"layer '{layer.name}': rows [{start}, {start + rows}) need input rows [{r0}, {r1}), "
                         f"the piece holds [{lo}, {lo + x.shape[2]})")
    xs = x[:, :, r0 - lo:r1 - lo, c0:c1]

    def padded(t: torch.Tensor, own: float, over: float, zero: float = 0.0) -> torch.Tensor:
        for k, value in ((0, zero), (1, own), (2, over)):
            widths = (left[k], right[k], top[k], bottom[k])
            if any(widths):
                t = F.pad(t, widths, value=value)
        return t

    if layer.kind == "conv":
        return F.conv2d(padded(xs, 0.0, 0.0), module.weight, module.bias, layer.stride, 0, layer.dilation,
                        layer.groups)
    if layer.kind == "maxpool":
        return F.max_pool2d(padded(xs, -math.inf, -math.inf), layer.kernel, layer.stride, 0)
    total = F.avg_pool2d(padded(xs, 0.0, 0.0), layer.kernel, layer.stride, 0, divisor_override=1)
    if op.divisor_override:
        return total / op.divisor_override
    ones = torch.ones((1, 1, xs.shape[2], xs.shape[3]), dtype=xs.dtype)
    count = F.avg_pool2d(padded(ones, 1.0 if op.count_include_pad else 0.0, 0.0, 1.0), layer.kernel,
                         layer.stride, 0, divisor_override=1)
    return total / count


def reference_values(traced: TracedModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the unsplit model on ``x`` and keep every node's value (fx node name -> value)."""
    values: dict[str, Any] = {}

    class _Keep(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            values[n.name] = out
            return out

    with torch.no_grad():
        _Keep(traced.gm, garbage_collect_values=False).run(x)
    return values


def _call(node: fx.Node, gm: fx.GraphModule, args: tuple, kwargs: dict) -> Any:
    if node.op == "call_module":
        return gm.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    self_obj, *rest = args
    return getattr(self_obj, node.target)(*rest, **kwargs)


@dataclasses.dataclass
class RunPlan:
    """Rows every node of a fused run must compute for one piece.

    Attributes:
      need: fx node name -> (lo, hi) output rows needed (nodes inside the run and its external inputs).
      externals: names of the nodes outside the run whose rows the piece reads.
    """

    need: dict[str, tuple[int, int]]
    externals: list[str]


def _merge(old: tuple[int, int] | None, want: tuple[int, int]) -> tuple[int, int]:
    """Hull of two row ranges; an empty range adds nothing to a non-empty one."""
    if old is None or old[0] == old[1]:
        return want
    if want[0] == want[1]:
        return old
    return (min(old[0], want[0]), max(old[1], want[1]))


class FusedRun:
    """Layers ``first .. last`` (inclusive indices into the layer table) executed as one piece.

    Raises:
      UnsupportedModelError: if the run holds a node that is not row-local (a linear layer, flatten,
        global pooling) or is empty.
    """

    def __init__(self, traced: TracedModel, first: int, last: int) -> None:
        n_ops = len(traced.ops)
        if not (0 <= first <= last < n_ops):
            raise ValueError(f"field 'fused' = {first}:{last + 1} must be a non-empty layer range within "
                             f"0:{n_ops}")
        self.traced, self.first, self.last = traced, first, last
        order = {n.name: i for i, n in enumerate(traced.gm.graph.nodes)}
        first_op, self.out_op = traced.ops[first], traced.ops[last]
        begin = order[first_op.folded or first_op.node]
        end = order[self.out_op.node]
        self.nodes = [n for n in traced.gm.graph.nodes if begin <= order[n.name] <= end]
        self.names = {n.name for n in self.nodes}
        self.op_by_node = {op.node: op for op in traced.ops}
        for n in self.nodes:
            kind = traced.kinds[n.name]
            if kind == "global" or (kind == "layer" and self.op_by_node[n.name].kind == "linear"):
                raise UnsupportedModelError(f"fused run {first}:{last + 1} holds node '{n.name}', which is not "
                                            f"row-local ({kind} {getattr(n.target, '__name__', n.target)})")
        self.outputs = [self.out_op.node]

    @classmethod
    def segment(cls, traced: TracedModel, first: int, end: int) -> "FusedRun":
        """A plan's rows segment: layers ``[first, end)`` and the costless row-local nodes after them
        up to the next layer, whose outputs are every tensor the rest of the model reads from it (the
        tensor held at the cut ``end``, e.g. a ResNet block's activated residual sum).

        Raises:
          UnsupportedModelError: a layer of the range is not row-local, or its outputs differ in height.
        """
        n_ops = len(traced.ops)
        if not (0 <= first < end <= n_ops):
            raise ValueError(f"field 'layers' = [{first}, {end}] must be a non-empty layer range within [0, {n_ops}]")
        run = cls(traced, first, end - 1)
        nodes = list(traced.gm.graph.nodes)
        order = {n.name: i for i, n in enumerate(nodes)}
        begin = order[traced.ops[first].folded or traced.ops[first].node]
        after = traced.ops[end] if end < n_ops else None
        stop = order[after.folded or after.node] if after is not None else len(nodes)
        inside: set[str] = set()
        members = []
        for n in nodes[begin:stop]:
            kind = traced.kinds[n.name]
            if kind not in ("layer", "row_local", "folded"):
                continue
            srcs = [a.name for a in n.all_input_nodes if traced.kinds[a.name] != "constant"]
            if kind == "layer":
                srcs = [run.op_by_node[n.name].input]
            if any(order[a] >= begin and a not in inside for a in srcs):
                continue  # downstream of a global node of the range: executed after the segment
            inside.add(n.name)
            members.append(n)
        missing = [op.node for op in traced.ops[first:end] if op.node not in inside]
        if missing:
            raise UnsupportedModelError(f"segment [{first}, {end}]: layer node '{missing[0]}' does not read the "
                                        f"segment's input")
        outputs = [n.name for n in members if traced.kinds[n.name] != "folded"
                   and any(u.name not in inside for u in n.users)]
        heights = {traced.shapes[o][2] if len(traced.shapes.get(o, ())) == 4 else -1 for o in outputs}
        if not outputs or len(heights) != 1 or -1 in heights:
            raise UnsupportedModelError(f"segment [{first}, {end}]: its outputs {outputs} are not image tensors of "
                                        f"one height")
        run.nodes, run.names, run.outputs = members, inside, outputs
        return run

    @property
    def out_height(self) -> int:
        """Height of the run's output tensors (rows a split divides)."""
        return int(self.traced.shapes[self.outputs[0]][2])

    def _inputs(self, node: fx.Node) -> list[str]:
        if node.name in self.op_by_node:
            return [self.op_by_node[node.name].input]
        return [a.name for a in node.all_input_nodes]

    def plan(self, start: int, rows: int) -> RunPlan:
        """Back-project output rows ``[start, start + rows)`` of the last layer through the run."""
        shapes = self.traced.shapes
        need: dict[str, tuple[int, int]] = {o: (start, start + rows) for o in self.outputs}
        externals: list[str] = []
        for node in reversed(self.nodes):
            if node.name not in need or self.traced.kinds[node.name] == "folded":
                continue
            lo, hi = need[node.name]
            op = self.op_by_node.get(node.name)
            for src in self._inputs(node):
                if op is not None:
                    want = op.layer.input_rows(lo, hi - lo)
                elif len(shapes.get(src, ())) == 4 and shapes[src][2] == shapes[node.name][2]:
                    want = (lo, hi)
                elif len(shapes.get(src, ())) == 4:
                    want = (0, shapes[src][2])  # broadcast along rows: read it whole
                else:
                    continue  # a constant or a non-image input
                need[src] = _merge(need.get(src), want)
                if src not in self.names and src not in externals:
                    externals.append(src)
        return RunPlan(need, externals)

    def execute(self, plan: RunPlan, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Compute the piece: ``inputs`` maps each external node to its rows ``plan.need[name]``;
        returns the rows of the (first) output."""
        return self.execute_outputs(plan, inputs)[self.outputs[0]]

    def execute_outputs(self, plan: RunPlan, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Compute the piece; returns every output's rows ``plan.need[output]`` (node name -> tensor)."""
        gm = self.traced.gm
        have: dict[str, tuple[torch.Tensor, int]] = {k: (v, plan.need[k][0]) for k, v in inputs.items()}

        def rows_of(name: str, lo: int, hi: int) -> torch.Tensor:
            t, off = have[name]
            return t[:, :, lo - off:hi - off]

        for node in self.nodes:
            if node.name not in plan.need or self.traced.kinds[node.name] == "folded":
                continue
            lo, hi = plan.need[node.name]
            op = self.op_by_node.get(node.name)
            if op is not None:
                src = op.input
                t, off = have[src]
                have[node.name] = (run_piece(op, gm.get_submodule(op.target), t, off, lo, hi - lo), lo)
                continue
            full_h = self.traced.shapes[node.name][2]

            def sub(a: Any) -> Any:
                if isinstance(a, fx.Node):
                    if a.name not in have and self.traced.kinds[a.name] == "constant":
                        return fx.Interpreter(gm).fetch_attr(a.target)
                    if a.name not in have:
                        raise UnsupportedModelError(f"fused run: node '{node.name}' reads '{a.name}', "
                                                    f"which is not an image tensor of the run")
                    t, off = have[a.name]
                    if t.dim() == 4 and self.traced.shapes[a.name][2] == full_h:
                        return rows_of(a.name, lo, hi)
                    return t
                return a

            args = fx.node.map_aggregate(node.args, sub)
            kwargs = fx.node.map_aggregate(node.kwargs, sub)
            have[node.name] = (_call(node, gm, args, kwargs), lo)
        return {o: have[o][0] for o in self.outputs}

    def computed_rows(self, plan: RunPlan) -> dict[str, int]:
        """Rows each layer op of the run computes for this piece (fx node name -> rows)."""
        return {n: hi - lo for n, (lo, hi) in plan.need.items() if n in self.names and n in self.op_by_node}


class Checked:
    """A report with ``max_error`` and ``tolerance``: ``passed`` and a JSON-ready ``to_dict``."""

    max_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(self.max_error <= self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["passed"] = self.passed
        return d


@dataclasses.dataclass
class PieceReport(Checked):
    """The proof of one layer (or fused run) under one split.

    Attributes:
      name: layer name (``first..last`` for a fused run).
      out_rows: H_out of the (last) layer.
      rows: output rows per device (N,).
      input_rows: input rows read per device (N,), summed over the run's external inputs.
      computed_rows: rows computed per layer of the run, summed over devices (one entry per layer).
      redundant_work: FLOP computed more than once (halo recomputation), summed over the run.
      max_error: max |stitched - unsplit| / max |unsplit| (0 for an all-zero output).
      tolerance: the pass threshold for the dtype.
    """

    name: str
    out_rows: int
    rows: list[int]
    input_rows: list[int]
    computed_rows: list[int]
    redundant_work: float
    max_error: float
    tolerance: float


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (absolute error when ``want`` is all zero)."""
    if got.shape != want.shape:
        return math.inf
    scale = float(want.abs().max()) if want.numel() else 0.0
    err = float((got - want).abs().max()) if want.numel() else 0.0
    if not math.isfinite(err):
        return math.inf
    return err / scale if scale > 0 else err


@torch.no_grad()
def split_run(traced: TracedModel, values: dict[str, torch.Tensor], first: int, last: int,
              rows: Sequence[int]) -> PieceReport:
    """Execute layers ``first..last`` as pieces split by ``rows`` of the last layer and compare.

    Args:
      traced: the traced model.
      values: the unsplit model's node values (:func:`reference_values`).
      first, last: inclusive layer indices of the run (``first == last`` for one layer).
      rows: output rows per device of the last layer, (N,) non-negative, summing to its H_out.
    Returns:
      The :class:`PieceReport`.
    """
    if not (0 <= first <= last < len(traced.ops)):
        raise ValueError(f"field 'fused' = {first}:{last + 1} must be a non-empty layer range within "
                         f"0:{len(traced.ops)}")
    op = traced.ops[last]
    rows = [int(r) for r in rows]
    total = op.layer.out_height
    if min(rows, default=0) < 0 or sum(rows) != total:
        raise ValueError(f"layer '{op.layer.name}': field 'rows' = {rows} must be non-negative and sum to "
                         f"H_out = {total}")
    want = values[op.node]
    tol = TOLERANCE.get(want.dtype, 1e-5)
    if op.kind == "linear" and first == last:  # one row: the device that has it computes it whole
        got = run_piece(op, traced.module(op), values[op.input], 0, 0, 1)
        return PieceReport(op.layer.name, 1, rows, [int(r > 0) for r in rows], [1], 0.0,
                           relative_error(got, want), tol)
    run = FusedRun(traced, first, last)
    outs, read = [], []
    per_op = {o.node: 0 for o in traced.ops[first:last + 1]}
    union: dict[str, list[tuple[int, int]]] = {o.node: [] for o in traced.ops[first:last + 1]}
    start = 0
    for n in rows:
        if n == 0:
            read.append(0)
            continue
        plan = run.plan(start, n)
        inputs = {k: values[k][:, :, plan.need[k][0]:plan.need[k][1]] for k in plan.externals}
        outs.append(run.execute(plan, inputs))
        read.append(sum(plan.need[k][1] - plan.need[k][0] for k in plan.externals))
        for k, c in run.computed_rows(plan).items():
            per_op[k] += c
            union[k].append(plan.need[k])
        start += n
    got = torch.cat(outs, dim=2)
    redundant = 0.0
    for o in traced.ops[first:last + 1]:
        covered = len(set().union(*(range(a, b) for a, b in union[o.node]))) if union[o.node] else 0
        redundant += (per_op[o.node] - covered) * o.layer.row_work
    name = op.layer.name if first == last else f"{traced.ops[first].layer.name}..{op.layer.name}"
    return PieceReport(name, total, rows, read, [per_op[o.node] for o in traced.ops[first:last + 1]],
                       redundant, relative_error(got, want), tol)


def validate_plan(traced: TracedModel, x: torch.Tensor, rows: np.ndarray,
                  fused: tuple[int, int] | None = None) -> list[PieceReport]:
    """Prove every layer of a plan (and optionally one fused run [first, last)).

    Args:
      traced: the traced model (its dtype decides the tolerance).
      x: the input tensor (B, C, H, W).
      rows: (L, N) output rows per device per layer (a plan of any solver).
      fused: optional half-open layer range (first, end); the run is split by ``rows[end - 1]``.
    Returns:
      One report per layer, then one for the fused run.
    """
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[0] != len(traced.ops):
        raise ValueError(f"field 'rows' must have shape (L={len(traced.ops)}, N), got {list(rows.shape)}")
    values = reference_values(traced, x)
    reports = [split_run(traced, values, i, i, rows[i]) for i in range(len(traced.ops))]
    if fused is not None:
        a, b = fused
        reports.append(split_run(traced, values, a, b - 1, rows[b - 1]))
    return reports
