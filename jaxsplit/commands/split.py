"""``jaxsplit split FILE``: split every layer of one or many instances across their devices."""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
from typing import Annotated, Iterator, Literal, Sequence

import tyro

from ..console import make_console
from ..instance import dumps_result, load, parse_line
from ..instance import loads as instance_loads
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


def print_table(plans, instances, solver: str, start: int = 0) -> None:
    """Readable tables: rows per device per layer, layer latency, request latency (``start``: the
    number of instances printed before these)."""
    from rich.table import Table

    console = make_console()
    for k, (plan, inst) in enumerate(zip(plans, instances), start=start):
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


#: JSON Lines instances solved per batched call, at most, and layer rows per call, at most (a batch is
#: padded to the next power of two rows, so a chunk of 2^16 rows wastes none): bounds the memory of a
#: large file (one chunk's arrays and results at a time) and keeps each call large enough to stay fast.
CHUNK, CHUNK_ROWS = 4096, 2**16


def _chunks(path: str, chunk: int = CHUNK) -> Iterator[tuple[list, int, int | None]]:
    """The instances of ``path`` (``-``: standard input) in chunks: ``(instances, bytes read so far,
    total bytes or None)``. An input of one chunk or less is parsed whole, as :func:`load` does (one
    JSON object over several lines, or JSON Lines); a longer one is JSON Lines read line by line, so
    that memory stays bounded. A bad line raises the ValueError of :func:`load`, naming its number,
    once the chunks before it are given."""
    try:
        fh = sys.stdin if path == "-" else open(path, encoding="utf-8")
    except OSError as err:
        raise ValueError(f"cannot read {path!r}: {err.strerror}") from None
    source = "<stdin>" if path == "-" else path
    total = None if path == "-" else os.fstat(fh.fileno()).st_size
    try:
        head, done, number = [], 0, 0  # done: characters read (bytes for ASCII JSON)
        try:
            for line in fh:
                head.append(line)
                done += len(line)
                if len(head) > chunk:
                    break
            else:  # small: exactly what load() does
                yield instance_loads("".join(head), source), done, total
                return
            batch, rows = [], 0
            for line in itertools.chain(head, fh):
                number += 1
                if number > len(head):
                    done += len(line)
                if not line.strip():
                    continue
                inst = _parse_line(line, number, source)
                if batch and rows + len(inst.layers) > CHUNK_ROWS:
                    yield batch, done, total
                    batch, rows = [], 0
                batch.append(inst)
                rows += len(inst.layers)
                if len(batch) == chunk:
                    yield batch, done, total
                    batch, rows = [], 0
            if batch:
                yield batch, done, total
        except UnicodeDecodeError as err:
            raise ValueError(f"{'<stdin>' if path == '-' else repr(path)} is not UTF-8 text (byte {err.start}: "
                             f"{err.object[err.start:err.start + 1]!r}); an instance file is JSON") from None
    finally:
        if fh is not sys.stdin:
            fh.close()


def _parse_line(line: str, number: int, source: str):
    """One JSON Lines instance, with :func:`load`'s messages."""
    return parse_line(line, number, source)


class _Progress:
    """A rich progress bar on standard error, over the input's bytes, only when standard error is a
    terminal (and the input more than one chunk)."""

    def __init__(self) -> None:
        self.bar = self.task = None

    def __call__(self, done: int, total: int | None, instances: int) -> None:
        if self.bar is None:
            if not sys.stderr.isatty():
                return
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

            from ..console import make_console

            self.bar = Progress(TextColumn("split"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                                TextColumn("{task.fields[info]}"), console=make_console(stderr=True), transient=True)
            self.task = self.bar.add_task("split", total=total, info="")
            self.bar.start()
        self.bar.update(self.task, completed=done, info=f"{instances:,} instances")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def main(argv: Sequence[str]) -> int:
    args = options.parse(SplitArgs, list(argv), "jaxsplit split")
    if args.plan == "layer":  # JSON Lines of any length in chunks: bounded memory, progress on a terminal
        progress, count = _Progress(), 0
        try:
            for instances, done, total in _chunks(args.file):
                plans = solve_instances(instances, args.solver)
                if args.json:
                    for p in plans:  # a line at a time: a reader that goes away (| head) is noticed
                        sys.stdout.write(dumps_result(p.names, p.rows, p.latencies) + "\n")
                else:
                    print_table(plans, instances, args.solver, start=count)
                count += len(instances)
                if count > len(instances):  # a second chunk: the input is large
                    progress(done, total, count)
        finally:
            progress.close()
        return 0
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
