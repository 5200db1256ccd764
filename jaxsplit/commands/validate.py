"""``jaxsplit validate``: prove a split numerically against the unsplit PyTorch model.

Every layer is executed as one piece per device (its input rows with halo, padding only at true
image borders), the pieces are stitched, and the result is compared with the unsplit layer. With
``--plan`` every segment of that plan (MODEL.md section 7) is proven instead: fused rows segments as
one piece per device, channel splits from the whole input. Exit status 1 when any layer, segment (or
the fused run) fails.

Importing this module imports torch; the dispatcher imports it only for ``jaxsplit validate``, and
reports a missing torch as a one-line error.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Literal, Optional, Sequence

import torch
from rich.console import Console
from rich.table import Table

from jaxsplit.bridge.graph import TracedModel, trace
from jaxsplit.bridge.pieces import PieceReport, validate_plan
from jaxsplit.bridge.planning import default_devices, load_devices, load_model, parse_range, plan_rows
from jaxsplit.bridge.segments import SegmentReport, check_segments, plan_segments, validate_segments

from . import options

SolverName = Literal["closed_form", "exact", "single", "equal", "proportional", "rebalance", "lp"]


@dataclasses.dataclass
class ValidateArgs:
    """Prove that the pieces of a split compute exactly what the unsplit layers compute."""

    model: str
    """A zoo model name, torchvision:NAME, or PATH.py:FACTORY (FACTORY() returns the module, or
    (module, input shape))."""
    input_size: Optional[tuple[int, int]] = None
    """Input height and width (default: the model's usual size)."""
    devices: int = 3
    """Number of devices of the built-in heterogeneous test cluster (ignored with --cluster)."""
    cluster: Optional[str] = None
    """JSON file with the devices: a list of device objects, or an object with a 'devices' list."""
    solver: SolverName = "closed_form"
    """Split rule that produces the plan (inside every segment of a fused plan: closed_form, exact,
    proportional or equal)."""
    plan: Optional[Literal["layer", "fused", "deepthings", "aofl"]] = None
    """Prove every segment of this plan (docs/MODEL.md section 7) for the cluster: 'layer' (every layer
    split on its own by --solver), 'fused' (the best plan of fused segments and channel splits),
    'deepthings' or 'aofl' (the peers' plans). Without it, every layer of the per-layer plan as a
    table of layers."""
    plan_file: Optional[str] = None
    """Prove the plan in this JSON file instead (one object with a 'segments' list, as `jaxsplit split
    --plan ... --json` prints it; the first line of a JSON Lines file) on --model."""
    fused: Optional[str] = None
    """Also prove layers A:B (half-open layer indices) fused into one piece per device."""
    dtype: Literal["float32", "float64"] = "float64"
    """Precision; the tolerance is 1e-10 (float64) or 1e-5 (float32) relative to the output's scale."""
    seed: int = 0
    """Seed of the weights (zoo models) and of the input."""
    json: bool = False
    """Print one JSON object instead of a table."""


def main(argv: Sequence[str]) -> int:
    """Validate the plan of ``argv``'s options; 0 when every piece matches the unsplit model, else 1."""
    args = options.parse(ValidateArgs, list(argv), "jaxsplit validate")
    devices = load_devices(args.cluster) if args.cluster else default_devices(args.devices)
    model, shape = load_model(args.model, args.input_size, args.seed)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    model = model.to(dtype)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed), dtype=dtype)
    traced = trace(model, x)
    if args.plan_file is not None:
        if args.plan is not None or args.fused:
            raise ValueError(f"field 'plan_file' = {args.plan_file!r}: give one of --plan-file, --plan and --fused")
        return _main_plan(args, traced, x, shape, devices, read_plan_file(args.plan_file))
    if args.plan is not None:
        if args.fused:
            raise ValueError(f"field 'fused' = {args.fused!r}: give either --fused or --plan (a plan proves its own "
                             f"fused segments)")
        return _main_plan(args, traced, x, shape, devices)
    fused = parse_range(args.fused, len(traced.ops)) if args.fused else None
    rows, _ = plan_rows(traced.layers, devices, args.solver)
    reports = validate_plan(traced, x, rows, fused)
    ok = all(r.passed for r in reports)
    if args.json:
        out = {"model": args.model, "input_shape": list(shape), "dtype": args.dtype, "solver": args.solver,
               "devices": len(devices), "layers": [r.to_dict() for r in reports[:len(traced.ops)]],
               "fused": reports[-1].to_dict() if fused else None, "passed": ok}
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        _print(reports, traced, args, shape, len(devices), fused)
    return 0 if ok else 1


def _print(reports: list[PieceReport], traced: TracedModel, args: ValidateArgs, shape: Sequence[int],
           n_devices: int, fused: tuple[int, int] | None) -> None:
    """Print the per-layer table, the fused run (if any) and the verdict."""
    title = (f"{args.model} {shape[2]}x{shape[3]}, {n_devices} devices, solver {args.solver}, {args.dtype}"
             f" (tolerance {reports[0].tolerance:g})")
    table = Table(title=title, title_justify="left")
    for col in ("#", "layer", "kind", "rows out", "rows per device", "input rows read", "max rel. error", ""):
        table.add_column(col, justify="left" if col in ("layer", "kind", "") else "right")
    for i, (r, op) in enumerate(zip(reports, traced.ops)):
        table.add_row(str(i), r.name, op.kind, str(r.out_rows), "/".join(map(str, r.rows)),
                      "/".join(map(str, r.input_rows)), f"{r.max_error:.2e}",
                      "[green]pass[/]" if r.passed else "[red]FAIL[/]")
    console = Console()
    console.print(table)
    if fused:
        r = reports[-1]
        console.print(f"fused {fused[0]}:{fused[1]} ({r.name}): rows {r.rows}, input rows read {r.input_rows}, "
                      f"rows computed per layer {r.computed_rows}, redundant work {r.redundant_work / 1e6:.2f} "
                      f"MFLOP, max rel. error {r.max_error:.2e}: {'pass' if r.passed else 'FAIL'}")
    n_bad = sum(not r.passed for r in reports)
    console.print("all layers pass" if not n_bad else f"[red]{n_bad} failed[/]")


def read_plan_file(path: str) -> tuple[list[dict], float | None]:
    """(segments, latency) of a plan JSON file; ValueError (one line) names the file and the field."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as err:
        raise ValueError(f"field 'plan_file': cannot read {path!r}: {err.strerror}") from None
    try:
        obj = json.loads(text.strip().splitlines()[0] if text.strip() else "")
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"field 'plan_file': {path!r} is not JSON: {str(err).splitlines()[0][:200]}") from None
    segments = obj.get("segments") if isinstance(obj, dict) else None
    if not isinstance(segments, list) or not segments:
        raise ValueError(f"field 'plan_file': {path!r} needs an object with a non-empty 'segments' list")
    for k, seg in enumerate(segments):
        if not isinstance(seg, dict) or not {"layers", "partition", "split"} <= set(seg):
            raise ValueError(f"field 'segments[{k}]' must be an object with 'layers', 'partition' and 'split', "
                             f"got {seg!r}")
        layers, split = seg["layers"], seg["split"]
        if not (isinstance(layers, list) and len(layers) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                      for v in layers)):
            raise ValueError(f"field 'segments[{k}].layers' must be [first, end], got {layers!r}")
        if not (isinstance(split, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in split)):
            raise ValueError(f"field 'segments[{k}].split' must be a list of integers, got {split!r}")
    latency = obj.get("latency")
    return segments, float(latency) if isinstance(latency, (int, float)) and not isinstance(latency, bool) else None


def _main_plan(args: ValidateArgs, traced: TracedModel, x: torch.Tensor, shape: Sequence[int],
               devices: Sequence, given: tuple[list[dict], float | None] | None = None) -> int:
    """Prove every segment of ``args.plan`` for ``devices`` (or of the plan ``given``, read from a
    file); 0 when all pass, else 1."""
    if given is None:
        segments, latency = plan_segments(traced.layers, devices, args.plan, args.solver)
    else:
        segments, latency = given
        check_segments(traced, segments)
        for k, seg in enumerate(segments):
            if len(seg["split"]) != len(devices):
                raise ValueError(f"field 'segments[{k}].split' = {seg['split']}: one entry per device, the cluster "
                                 f"has {len(devices)}")
        for seg in segments:  # the predicted latencies of the plan's own file (0 where it gives none)
            value = seg.get("latency")
            seg["latency"] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
        if latency is None:
            latency = sum(seg["latency"] for seg in segments)
    reports = validate_segments(traced, x, segments)
    ok = all(r.passed for r in reports)
    if args.json:
        out = {"model": args.model, "input_shape": list(shape), "dtype": args.dtype,
               "plan": args.plan or args.plan_file,
               "solver": args.solver, "devices": len(devices), "latency": latency,
               "segments": [r.to_dict() for r in reports], "passed": ok}
        sys.stdout.write(json.dumps(out) + "\n")
        return 0 if ok else 1
    title = (f"{args.model} {shape[2]}x{shape[3]}, {len(devices)} devices, plan {args.plan or args.plan_file}"
             + ("" if args.plan in ("deepthings", "aofl") else f", solver {args.solver}")
             + f", {args.dtype} (tolerance {reports[0].tolerance:g})")
    _print_segments(reports, title, latency)
    return 0 if ok else 1


def _print_segments(reports: list[SegmentReport], title: str, latency: float) -> None:
    """One row per segment: layers, partition, split, input rows, predicted latency, error, verdict."""
    table = Table(title=title, title_justify="left")
    for col in ("layers", "name", "partition", "split per device", "input rows read", "predicted (ms)",
                "max rel. error", ""):
        table.add_column(col, justify="left" if col in ("layers", "name", "partition", "") else "right")
    for r in reports:
        table.add_row(f"{r.layers[0]}:{r.layers[1]}", r.name, r.partition, "/".join(map(str, r.split)),
                      "/".join(map(str, r.input_rows)), f"{r.latency * 1e3:.3f}", f"{r.max_error:.2e}",
                      "[green]pass[/]" if r.passed else "[red]FAIL[/]")
    console = Console()
    console.print(table)
    n_bad = sum(not r.passed for r in reports)
    fused = sum(r.layers[1] - r.layers[0] > 1 for r in reports)
    channels = sum(r.partition == "channels" for r in reports)
    verdict = "all segments pass" if not n_bad else f"[red]{n_bad} failed[/]"
    console.print(f"{len(reports)} segments ({fused} fused, {channels} split by channels), predicted request "
                  f"latency {latency * 1e3:.3f} ms: {verdict}")
