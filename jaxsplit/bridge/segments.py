"""Prove the segments of a plan (MODEL.md section 7) numerically against the unsplit model.

A plan cuts the layer table into segments ``{"layers": [first, end], "partition": ..., "split": [...]}``:

* a *rows* segment of one layer is section 3's split (:func:`jaxsplit.bridge.pieces.split_run`);
* a *rows* segment of several layers runs as one piece per device (:meth:`FusedRun.segment`): device
  i computes rows ``[r_i, r_i + n_i)`` of the tensor held at the segment's end (for a ResNet block,
  its activated residual sum), from the rows of the segment's input that those rows project back to;
* a *channels* segment is one conv (groups 1) or linear layer: device i computes output channels
  ``[c_i, c_i + n_i)`` from the whole input (:func:`run_channels`).

:func:`validate_segments` executes every piece, stitches the outputs and compares them with the
unsplit model's values (:data:`jaxsplit.bridge.pieces.TOLERANCE`).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..instance import Device, Instance
from .graph import LayerOp, TracedModel
from .pieces import TOLERANCE, Checked, FusedRun, reference_values, relative_error, run_piece, split_run

#: The plans a bridge command takes (MODEL.md section 7; ``layer`` is section 3's per-layer plan).
PLAN_NAMES = ("layer", "fused", "deepthings", "aofl")


@dataclasses.dataclass
class SegmentReport(Checked):
    """The proof of one segment of a plan.

    Attributes:
      layers: [first, end), the half-open range of layer indices.
      partition: ``"rows"`` or ``"channels"``.
      split: rows (of the segment's output) or channels per device (N,).
      name: the layer's name, or ``first..last`` names for a fused segment.
      latency: the planner's predicted segment latency (s).
      input_rows: rows of the segment's input each device receives (N,) (the whole height for a
        channels split, 0 for a device with nothing to do).
      max_error: max |stitched - unsplit| / max |unsplit| over the segment's outputs.
      tolerance: the pass threshold for the dtype.
    """

    layers: list[int]
    partition: str
    split: list[int]
    name: str
    latency: float
    input_rows: list[int]
    max_error: float
    tolerance: float


def plan_segments(layers: Sequence[Any], devices: Sequence[Device], plan: str, solver: str = "closed_form",
                  bytes_per_element: float = 4.0) -> tuple[list[dict[str, Any]], float]:
    """The segments of ``plan`` (:data:`PLAN_NAMES`) for ``devices`` and the plan's latency (s).

    ``layer`` is section 3's per-layer plan with any of :mod:`jaxsplit.solvers`' rules (every layer
    one rows segment); the others come from :func:`jaxsplit.plan.plan_instances`, ``solver`` inside
    every segment where the plan takes a rule.
    """
    if plan not in PLAN_NAMES:
        raise ValueError(f"field 'plan': unknown plan {plan!r}; known: {', '.join(PLAN_NAMES)}")
    instance = Instance(tuple(layers), tuple(devices), bytes_per_element)
    if plan == "layer":
        from ..plan import solve_instances

        one = solve_instances([instance], solver)[0]
        segments = [{"layers": [i, i + 1], "partition": "rows", "split": [int(v) for v in one.rows[i]],
                     "latency": float(one.latencies[i])} for i in range(len(layers))]
        return segments, one.latency
    from ..plan import plan_instances

    result = plan_instances([instance], plan, solver)[0]
    return [dict(s) for s in result.segments], float(result.latency)


def check_segments(traced: TracedModel, segments: Sequence[dict[str, Any]]) -> None:
    """ValueError (one line) unless ``segments`` cover the layers in order with valid splits."""
    at, n_ops = 0, len(traced.ops)
    for k, seg in enumerate(segments):
        a, b = (int(v) for v in seg["layers"])
        if a != at or not a < b <= n_ops:
            raise ValueError(f"field 'segments[{k}].layers' = [{a}, {b}]: segments must cover layers 0..{n_ops} "
                             f"in order without gaps or overlaps (expected it to start at {at})")
        split = [int(v) for v in seg["split"]]
        if min(split, default=0) < 0:
            raise ValueError(f"field 'segments[{k}].split' = {split} must be non-negative")
        if seg["partition"] == "channels":
            op = traced.ops[a]
            if b - a != 1 or not _channel_ok(op):
                raise ValueError(f"field 'segments[{k}].partition' = 'channels': only one conv with groups 1 or one "
                                 f"linear layer splits by channels, got layers [{a}, {b}]")
            total = op.layer.out_channels
        elif seg["partition"] == "rows":
            total = traced.ops[a].layer.out_height if b - a == 1 else None
        else:
            raise ValueError(f"field 'segments[{k}].partition' = {seg['partition']!r} must be 'rows' or 'channels'")
        if total is not None and sum(split) != total:
            raise ValueError(f"field 'segments[{k}].split' = {split} must sum to {total}")
        at = b
    if at != n_ops:
        raise ValueError(f"field 'segments': they cover layers 0..{at}, the model has {n_ops}")


def _channel_ok(op: LayerOp) -> bool:
    return op.kind == "linear" or (op.kind == "conv" and op.layer.groups == 1)


def run_channels(op: LayerOp, module: torch.nn.Module, x: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """Output channels ``[start, start + count)`` of a conv (groups 1) or linear layer, every row.

    Args:
      op: the layer op.
      module: its module (``weight`` (C_out, ...) and ``bias`` (C_out,) or None).
      x: the whole input, (B, C_in, H, W) for a conv, (B, in_features) for a linear layer.
      start, count: the channels to compute.
    Returns:
      (B, count, H_out, W_out) or (B, count), equal to those channels of the unsplit layer.
    """
    if not _channel_ok(op):
        raise ValueError(f"layer '{op.layer.name}': field 'partition' = 'channels' needs a conv with groups 1 or a "
                         f"linear layer, got {op.kind} with groups {op.layer.groups}")
    if count <= 0:
        shape = (x.shape[0], 0) if op.kind == "linear" else (x.shape[0], 0, op.layer.out_height, op.layer.out_width)
        return x.new_zeros(shape)
    weight = module.weight[start:start + count]
    bias = module.bias[start:start + count] if module.bias is not None else None
    if op.kind == "linear":
        return F.linear(x, weight, bias)
    part = types.SimpleNamespace(weight=weight, bias=bias)
    return run_piece(op, part, x, 0, 0, op.layer.out_height)  # type: ignore[arg-type]


@torch.no_grad()
def split_channels(traced: TracedModel, values: dict[str, torch.Tensor], index: int, split: Sequence[int]
                   ) -> tuple[float, list[int]]:
    """Run layer ``index`` split by output channels ``split`` (N,); (max rel. error, input rows per device)."""
    op = traced.ops[index]
    split = [int(c) for c in split]
    if min(split, default=0) < 0 or sum(split) != op.layer.out_channels:
        raise ValueError(f"layer '{op.layer.name}': field 'split' = {split} must be non-negative and sum to "
                         f"C_out = {op.layer.out_channels}")
    x, module = values[op.input], traced.module(op)
    outs, start = [], 0
    for c in split:
        if c:
            outs.append(run_channels(op, module, x, start, c))
        start += c
    rows = 1 if op.kind == "linear" else op.layer.in_height
    return relative_error(torch.cat(outs, dim=1), values[op.node]), [rows if c else 0 for c in split]


@torch.no_grad()
def split_segment(traced: TracedModel, values: dict[str, torch.Tensor], first: int, end: int,
                  split: Sequence[int]) -> tuple[float, list[int]]:
    """Run the rows segment ``[first, end)`` as one piece per device, split by ``split`` (N,) rows of
    its output; (max rel. error over its outputs, input rows each device receives)."""
    run = FusedRun.segment(traced, first, end)
    split = [int(n) for n in split]
    if min(split, default=0) < 0 or sum(split) != run.out_height:
        raise ValueError(f"segment [{first}, {end}]: field 'split' = {split} must be non-negative and sum to the "
                         f"height of its output, {run.out_height}")
    pieces: dict[str, list[torch.Tensor]] = {o: [] for o in run.outputs}
    read, start = [], 0
    for n in split:
        if n == 0:
            read.append(0)
            continue
        plan = run.plan(start, n)
        inputs = {k: values[k][:, :, plan.need[k][0]:plan.need[k][1]] for k in plan.externals}
        for o, t in run.execute_outputs(plan, inputs).items():
            pieces[o].append(t)
        read.append(sum(plan.need[k][1] - plan.need[k][0] for k in plan.externals))
        start += n
    error = max(relative_error(torch.cat(pieces[o], dim=2), values[o]) for o in run.outputs)
    return error, read


def validate_segments(traced: TracedModel, x: torch.Tensor, segments: Sequence[dict[str, Any]]
                      ) -> list[SegmentReport]:
    """Prove every segment of a plan against the unsplit model on input ``x`` (B, C, H, W).

    Args:
      traced: the traced model (its dtype decides the tolerance).
      x: the input tensor.
      segments: MODEL.md section 7's segments (``layers``, ``partition``, ``split``, ``latency``).
    Returns:
      One :class:`SegmentReport` per segment.
    """
    check_segments(traced, segments)
    values = reference_values(traced, x)
    tol = TOLERANCE.get(x.dtype, 1e-5)
    reports = []
    for seg in segments:
        a, b = (int(v) for v in seg["layers"])
        split = [int(v) for v in seg["split"]]
        if seg["partition"] == "channels":
            error, read = split_channels(traced, values, a, split)
            name = traced.ops[a].layer.name
        elif b - a == 1:
            r = split_run(traced, values, a, a, split)
            error, read, name = r.max_error, r.input_rows, r.name
        else:
            error, read = split_segment(traced, values, a, b, split)
            name = f"{traced.ops[a].layer.name}..{traced.ops[b - 1].layer.name}"
        reports.append(SegmentReport([a, b], seg["partition"], split, name, float(seg.get("latency", np.nan)),
                                     [int(v) for v in read], float(error), tol))
    return reports


def segment_latencies(layers: Sequence[Any], segments: Sequence[dict[str, Any]], flops: Sequence[float],
                      bandwidth: Sequence[float], latency: Sequence[float], bytes_per_element: float = 4.0
                      ) -> list[float]:
    """Every segment's latency (s) under MODEL.md section 7 for given device parameters (N,) each
    (FLOP/s, bytes/s, s; whole shares), e.g. the ones a run fitted."""
    import jax.numpy as jnp

    from ..latency import Cluster
    from ..planner import CHANNELS, FUSED, ROWS, Planner

    planner = Planner(layers, bytes_per_element)
    index = {(int(a), int(b), int(k)): c for c, (a, b, k) in
             enumerate(zip(planner.candidate_start, planner.candidate_end, planner.candidate_kind))}
    splits = np.zeros((planner.num_candidates, len(flops)), np.int32)
    chosen = []
    for k, seg in enumerate(segments):
        a, b = (int(v) for v in seg["layers"])
        kind = CHANNELS if seg["partition"] == "channels" else (ROWS if b - a == 1 else FUSED)
        if (a, b, kind) not in index:
            raise ValueError(f"field 'segments[{k}]': [{a}, {b}] with partition {seg['partition']!r} is not a "
                             f"segment of this model's plans")
        splits[index[a, b, kind]] = [int(v) for v in seg["split"]]
        chosen.append(index[a, b, kind])
    cluster = Cluster.create(flops=list(flops), bandwidth=list(bandwidth), latency=list(latency))
    lat = planner.candidate_latencies(cluster, jnp.ones(len(flops)), jnp.asarray(splits))
    return [float(v) for v in np.asarray(lat, np.float64)[chosen]]
