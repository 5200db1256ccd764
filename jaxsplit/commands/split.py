"""``jaxsplit split FILE``: split every layer of one or many instances across their devices."""

from __future__ import annotations

import dataclasses
import sys
from typing import Annotated, Literal, Sequence

import tyro

from ..console import make_console
from ..instance import dumps_result, load
from ..plan import plan_instances, solve_instances
from . import options

SolverName = Literal["closed_form", "exact", "single", "equal", "proportional", "rebalance", "lp"]


@dataclasses.dataclass
class SplitArgs:
    """Split every layer of the instances in FILE (JSON object or JSON Lines; - for stdin)."""

    file: tyro.conf.Positional[str]
    """Instance file: one JSON object, or JSON Lines with one instance per line; '-' reads stdin."""
    solver: SolverName = "closed_form"
    """Split rule: the closed form, the exact optimum, or a baseline (inside every segment of a fused
    plan: closed_form, exact, proportional or equal)."""
    plan: Literal["layer", "fused", "deepthings", "aofl"] = "layer"
    """The plan (docs/MODEL.md section 7): every layer split on its own (the default; the per-layer
    output), the best plan of fused segments and channel splits, or a peer's plan (DeepThings: a fused
    prefix with equal rows; AOFL: fusion points by dynamic programming, rows proportional to compute).
    Every plan but 'layer' prints its segments."""
    json: bool = False
    """Print one JSON object per instance (one line each) instead of a table."""


def print_table(plans, instances, solver: str) -> None:
    """Readable tables: rows per device per layer, layer latency, request latency."""
    from rich.table import Table

    console = make_console()
    for k, (plan, inst) in enumerate(zip(plans, instances)):
        title = f"instance {k + 1}: {len(inst.layers)} layers on {inst.num_devices} devices, solver {solver}"
        table = Table(title=title, title_justify="left")
        table.add_column("layer")
        table.add_column("rows out", justify="right")
        for i, dev in enumerate(inst.devices):
            table.add_column(f"dev{i}" + (f" ({dev.share:g})" if dev.share != 1 else ""), justify="right")
        table.add_column("latency (ms)", justify="right")
        for name, layer, rows, t in zip(plan.names, inst.layers, plan.rows, plan.latencies):
            table.add_row(name, str(layer.out_height), *(str(int(r)) for r in rows), f"{t * 1e3:.3f}")
        table.add_section()
        table.add_row("request", "", *([""] * inst.num_devices), f"{plan.latency * 1e3:.3f}")
        console.print(table)


def print_segments(plans, instances, plan: str, solver: str) -> None:
    """Readable tables of plans: one row per segment, its layers, partition, split and latency."""
    from rich.table import Table

    console = make_console()
    for k, (result, inst) in enumerate(zip(plans, instances)):
        rule = "" if plan in ("deepthings", "aofl") else f", solver {solver}"
        title = f"instance {k + 1}: {len(inst.layers)} layers on {inst.num_devices} devices, plan {plan}{rule}"
        table = Table(title=title, title_justify="left")
        table.add_column("layers")
        table.add_column("partition")
        for i, dev in enumerate(inst.devices):
            table.add_column(f"dev{i}" + (f" ({dev.share:g})" if dev.share != 1 else ""), justify="right")
        table.add_column("latency (ms)", justify="right")
        for seg in result.segments:
            a, b = seg["layers"]
            span = result.names[a] if b - a == 1 else f"{result.names[a]} .. {result.names[b - 1]} ({b - a})"
            table.add_row(span, seg["partition"], *(str(v) for v in seg["split"]), f"{seg['latency'] * 1e3:.3f}")
        table.add_section()
        table.add_row("request", "", *([""] * inst.num_devices), f"{result.latency * 1e3:.3f}")
        console.print(table)


def main(argv: Sequence[str]) -> int:
    args = options.parse(SplitArgs, list(argv), "jaxsplit split")
    instances = load(args.file)
    if args.plan != "layer":
        results = plan_instances(instances, args.plan, args.solver)
        if args.json:
            for result in results:
                sys.stdout.write(result.to_json() + "\n")
        else:
            print_segments(results, instances, args.plan, args.solver)
        return 0
    plans = solve_instances(instances, args.solver)
    if args.json:
        for plan in plans:
            sys.stdout.write(dumps_result(plan.names, plan.rows, plan.latencies) + "\n")
    else:
        print_table(plans, instances, args.solver)
    return 0
