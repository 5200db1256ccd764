"""``jaxsplit run``: split inference across worker processes with torch.distributed (gloo).

Without ``--rank`` every rank starts on this machine over loopback. With ``--rank R`` this process
is rank R of a run across machines: start one process per device with the same options, the same
``--master-addr`` (the coordinator's address) and ``--master-port``; rank 0 prints the report.
With ``--plan fused`` (or ``deepthings``, ``aofl``) the same requests also run that plan of MODEL.md
section 7 (fused segments, channel splits), taking turns with the per-layer plan, and the report
sets its measured segment times against the predicted ones beside the per-layer table.

Importing this module imports torch; the dispatcher imports it only for ``jaxsplit run``, and
reports a missing torch as a one-line error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Any, Literal, Optional, Sequence

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

# c10d logs each failed connection attempt with its C++ stack trace on standard error; the command
# reports a failed rendezvous itself, in one line (set TORCH_CPP_LOG_LEVEL to see torch's own logs)
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")

from jaxsplit.bridge.calibration import layer_latencies, model_from_run
from jaxsplit.bridge.distributed import RunError, RunSpec, check_port, launch_local, run_rank
from jaxsplit.bridge.graph import trace
from jaxsplit.bridge.planning import default_devices, load_devices, load_model, plan_rows
from jaxsplit.bridge.segments import plan_segments, segment_latencies
from jaxsplit.instance import Device
from jaxsplit.layers import Layer
from jaxsplit.reference import layer_latency

from . import options

SolverName = Literal["closed_form", "exact", "single", "equal", "proportional", "rebalance", "lp"]


@dataclasses.dataclass
class RunArgs:
    """Run a model split by a solver's plan across processes and compare with the unsplit model."""

    model: str
    """A zoo model name, torchvision:NAME, or PATH.py:FACTORY."""
    input_size: Optional[tuple[int, int]] = None
    """Input height and width (default: the model's usual size)."""
    devices: int = 2
    """Number of processes (devices; rank 0 is the coordinator) of the built-in test cluster."""
    cluster: Optional[str] = None
    """JSON file with the devices the plan is made for (its length sets the number of processes)."""
    solver: SolverName = "closed_form"
    """Split rule that produces the plan (inside every segment of a fused plan: closed_form, exact,
    proportional or equal)."""
    plan: Literal["layer", "fused", "deepthings", "aofl"] = "layer"
    """Also run this plan (docs/MODEL.md section 7) in the same requests and report its segments'
    measured and predicted times beside the per-layer plan: 'fused' (the best plan of fused segments
    and channel splits), 'deepthings' or 'aofl' (the peers' plans); 'layer' runs the per-layer plan
    alone."""
    dtype: Literal["float32", "float64"] = "float32"
    """Precision of the run."""
    repeats: int = 3
    """Timed runs of the request (after one warm-up run); medians are reported."""
    calibrate: bool = False
    """Fit every device's FLOP/s, bandwidth and message latency, and predict with them; also fit the
    per-class compute costs (microbenchmarks) and predict with those."""
    timeout: float = 60.0
    """Seconds any single wait may take; a rank that does not answer in time fails the run."""
    threads: int = 1
    """torch threads per process."""
    master_addr: str = "127.0.0.1"
    """Address of rank 0 (MASTER_ADDR)."""
    master_port: int = 0
    """Port of rank 0 (MASTER_PORT); 0 picks a free one (local runs only)."""
    rank: Optional[int] = None
    """Run only this rank (multi-machine runs); omit to start every rank here."""
    seed: int = 0
    """Seed of the weights and of the input."""
    json: bool = False
    """Print one JSON object instead of tables."""


def _spec(args: RunArgs) -> tuple[RunSpec, list[Layer], tuple[Device, ...], np.ndarray, np.ndarray, list, float]:
    """Check the options and make the run's spec, layer table, devices, rows, predicted latencies, and
    the further plan's segments and predicted latency (s) (``[]`` and NaN for ``--plan layer``)."""
    if args.timeout <= 0 or not math.isfinite(args.timeout):
        raise ValueError(f"field 'timeout' must be a positive number of seconds, got {args.timeout!r}")
    if args.repeats < 1:
        raise ValueError(f"field 'repeats' must be at least 1, got {args.repeats!r}")
    if args.threads < 1:
        raise ValueError(f"field 'threads' must be at least 1, got {args.threads!r}")
    devices = load_devices(args.cluster) if args.cluster else default_devices(args.devices)
    if len(devices) < 1:
        raise ValueError("field 'devices' must be at least 1")
    model, shape = load_model(args.model, args.input_size, args.seed)
    layers = trace(model, shape).layers
    rows, predicted = plan_rows(layers, devices, args.solver)
    segments, plan_latency = [], math.nan
    if args.plan != "layer":
        segments, plan_latency = plan_segments(layers, devices, args.plan, args.solver)
    plans = (tuple((s["layers"][0], s["layers"][1], s["partition"], tuple(s["split"])) for s in segments),) \
        if segments else ()
    spec = RunSpec(args.model, tuple(shape[2:]), tuple(map(tuple, rows.tolist())), args.dtype, args.seed,
                   args.timeout, args.repeats, args.threads, args.calibrate, plans)
    return spec, layers, devices, rows, predicted, segments, plan_latency


def predict(layers: Sequence[Layer], rows: np.ndarray, flops: Sequence[float], bandwidth: Sequence[float],
            latency: Sequence[float], q: float) -> list[float]:
    """Layer latencies (s) of MODEL.md section 3 for measured device parameters."""
    devs = list(zip(flops, bandwidth, latency))
    return [layer_latency(layer, devs, [1.0] * len(devs), r, q) for layer, r in zip(layers, rows)]


def main(argv: Sequence[str]) -> int:
    """Run the split of ``argv``'s options; 0 when the output matches the unsplit model, else 1."""
    args = options.parse(RunArgs, list(argv), "jaxsplit run")
    spec, layers, devices, rows, predicted, segments, plan_latency = _spec(args)
    try:
        if args.rank is not None:
            if not 0 <= args.rank < spec.world_size:
                raise ValueError(f"field 'rank' must be in 0..{spec.world_size - 1}, got {args.rank}")
            if args.master_port == 0:
                raise ValueError("field 'master_port' must be given with --rank")
            if args.rank == 0:
                check_port(args.master_addr, args.master_port)
            result = run_rank(spec, args.rank, args.master_addr, args.master_port)
            if result is None:
                return 0
        else:
            result = _with_progress(spec, args, len(layers))
    except RunError as err:
        print(f"jaxsplit run: error: {err}", file=sys.stderr)
        return 1
    q = 8.0 if args.dtype == "float64" else 4.0
    calibrated = per_class = None
    if args.calibrate:
        calibrated = predict(layers, rows, result["flops"], result["bandwidth"], result["latency"], q)
        per_class = layer_latencies(layers, rows, model_from_run(result), result["bandwidth"], result["latency"],
                                    q)[0].tolist()
    seg_calibrated = None
    if segments and args.calibrate:
        seg_calibrated = segment_latencies(layers, segments, result["flops"], result["bandwidth"], result["latency"])
    plan_out = None
    if segments:
        measured = result["plans"][0]
        plan_out = {"plan": args.plan, "latency": plan_latency, "request_time": measured["request_time"],
                    "max_error": measured["max_error"],
                    "segments": [{**seg, "measured": float(t), "compute_times": c,
                                  **({"calibrated": seg_calibrated[k]} if seg_calibrated else {})}
                                 for k, (seg, t, c) in enumerate(zip(segments, measured["segment_times"],
                                                                     measured["compute_times"]))]}
    ok = result["max_error"] <= result["tolerance"] and (
        plan_out is None or plan_out["max_error"] <= result["tolerance"])
    if args.json:
        out = {"model": args.model, "solver": args.solver, "devices": spec.world_size, "rows": rows.tolist(),
               "predicted": [float(p) for p in predicted], "predicted_calibrated": calibrated,
               "predicted_per_class": per_class,
               **{k: v for k, v in result.items() if k != "plans"}, "plan": plan_out, "passed": ok}
        sys.stdout.write(json.dumps(out, default=float) + "\n")
    else:
        _print(result, rows, predicted, calibrated, per_class, args, spec)
        if plan_out is not None:
            _print_plan(plan_out, result, predicted, calibrated, layers, args, spec)
    return 0 if ok else 1


def _with_progress(spec: RunSpec, args: RunArgs, n_layers: int) -> dict[str, Any]:
    """Run every rank here, with a progress bar on an interactive standard error."""
    if args.json or not sys.stderr.isatty():
        return launch_local(spec, args.master_addr, args.master_port)
    n_plans = 1 + len(spec.plans)
    with Progress(transient=True) as bar:
        task = bar.add_task("starting workers", total=spec.repeats * n_layers * n_plans)

        def step(k: int, i: int) -> None:  # k counts the requests of every plan
            bar.update(task, completed=k * n_layers + i + 1, description=f"run {k // n_plans + 1}/{spec.repeats}")

        return launch_local(spec, args.master_addr, args.master_port, progress=step)


def _print(result: dict[str, Any], rows: np.ndarray, predicted: np.ndarray, calibrated: list[float] | None,
           per_class: list[float] | None, args: RunArgs, spec: RunSpec) -> None:
    """Print the per-layer table, the request time and the output check."""
    console = Console()
    table = Table(title=f"{args.model} on {spec.world_size} processes, solver {args.solver}, {args.dtype}",
                  title_justify="left")
    cols = ["layer", "rows per device", "measured (ms)", "predicted (ms)"]
    if calibrated is not None:
        cols += ["calibrated prediction (ms)", "per-class prediction (ms)"]
    for c in cols:
        table.add_column(c, justify="left" if c == "layer" else "right")
    for i, name in enumerate(result["names"]):
        cells = [name, "/".join(map(str, rows[i])), f"{result['layer_times'][i] * 1e3:.3f}", f"{predicted[i] * 1e3:.3f}"]
        if calibrated is not None:
            cells += [f"{calibrated[i] * 1e3:.3f}", f"{per_class[i] * 1e3:.3f}"]
        table.add_row(*cells)
    console.print(table)
    console.print(f"request: measured {result['request_time'] * 1e3:.2f} ms (median of {spec.repeats}), "
                  f"sum of layers predicted {sum(predicted) * 1e3:.2f} ms"
                  + (f", calibrated {sum(calibrated) * 1e3:.2f} ms, per class {sum(per_class) * 1e3:.2f} ms"
                     if calibrated is not None else ""))
    if calibrated is not None:
        console.print("fitted: FLOP/s " + ", ".join(f"{f:.3g}" for f in result["flops"]) + "; bandwidth B/s "
                      + ", ".join(f"{b:.3g}" for b in result["bandwidth"]) + "; latency s "
                      + ", ".join(f"{t:.2g}" for t in result["latency"]))
    ok = result["max_error"] <= result["tolerance"]
    console.print(f"output vs unsplit model: max rel. error {result['max_error']:.2e} "
                  f"(tolerance {result['tolerance']:g}): {'pass' if ok else 'FAIL'}")


def _print_plan(plan: dict[str, Any], result: dict[str, Any], predicted: np.ndarray, calibrated: list[float] | None,
                layers: Sequence[Layer], args: RunArgs, spec: RunSpec) -> None:
    """The plan's segment table (measured against predicted) and both plans' totals."""
    console = Console()
    rule = "" if args.plan in ("deepthings", "aofl") else f", solver {args.solver}"
    table = Table(title=f"plan {args.plan}{rule}: {len(plan['segments'])} segments on {spec.world_size} processes",
                  title_justify="left")
    cols = ["layers", "name", "partition", "split per device", "measured (ms)", "predicted (ms)"]
    with_cal = plan["segments"] and "calibrated" in plan["segments"][0]
    if with_cal:
        cols.append("calibrated prediction (ms)")
    for c in cols:
        table.add_column(c, justify="left" if c in ("layers", "name", "partition") else "right")
    for seg in plan["segments"]:
        a, b = seg["layers"]
        name = layers[a].name if b - a == 1 else f"{layers[a].name}..{layers[b - 1].name}"
        cells = [f"{a}:{b}", name, seg["partition"], "/".join(map(str, seg["split"])), f"{seg['measured'] * 1e3:.3f}",
                 f"{seg['latency'] * 1e3:.3f}"]
        if with_cal:
            cells.append(f"{seg['calibrated'] * 1e3:.3f}")
        table.add_row(*cells)
    console.print(table)
    seg_sum = sum(s["measured"] for s in plan["segments"])
    cal = f", calibrated {sum(s['calibrated'] for s in plan['segments']) * 1e3:.2f} ms" if with_cal else ""
    console.print(f"plan {args.plan}: request measured {plan['request_time'] * 1e3:.2f} ms (segments "
                  f"{seg_sum * 1e3:.2f} ms), predicted {plan['latency'] * 1e3:.2f} ms{cal}")
    layer_cal = f", calibrated {sum(calibrated) * 1e3:.2f} ms" if calibrated is not None else ""
    console.print(f"plan layer: request measured {result['request_time'] * 1e3:.2f} ms (layers "
                  f"{sum(result['layer_times']) * 1e3:.2f} ms), predicted {sum(predicted) * 1e3:.2f} ms{layer_cal}")
    console.print(f"speed-up of plan {args.plan} over plan layer: measured "
                  f"{result['request_time'] / plan['request_time']:.2f}x, predicted "
                  f"{sum(predicted) / plan['latency']:.2f}x")
    ok = plan["max_error"] <= result["tolerance"]
    console.print(f"plan {args.plan} output vs unsplit model: max rel. error {plan['max_error']:.2e} "
                  f"(tolerance {result['tolerance']:g}): {'pass' if ok else 'FAIL'}")
