"""``jaxsplit bench split|plan|env|train|all``: the headline throughput figures on this machine (:mod:`jaxsplit.bench`).

* ``split``: layer-solves/s of the batched jitted split solvers per solver, N and batch, with each
  solver's gap to the exact optimum;
* ``plan``: best plans/s (MODEL.md section 7, the closed form in every segment) per model, N and
  batch, with the gap to the exact best plan;
* ``env``: allocation-environment steps/s (random policy) against the number of environments;
* ``train``: PPO training env-steps/s, one agent and populations (the ``jaxsplit train`` defaults);
* ``all``: the four.

Compile time is reported apart from the run time; the rate is the best of ``--repeats`` runs and the
spread says how far the slowest was from it. The machine (devices, versions, CPU, load) is printed
with the figures. ``--quick`` runs small settings (a smoke run: under a minute on a 2-core CPU,
seconds once its programs are in the compilation cache); ``--json`` prints one JSON object. Options
given explicitly replace the chosen settings' values.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from jaxsplit import bench

from . import options

CHOICES = (*bench.SECTIONS, "all")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line through the dispatcher, exit status 2
        raise ValueError(message)


def _ints(field: str):
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"field '{field}': expected comma-separated integers, got {text!r}") from None
        return bench.check_positive(field, values)

    return parse


#: the list options, each read as one comma-joined word (``--devices 2,4`` or ``--devices 2 4``)
LISTS = {flag: options.ListOption(flag, str if flag in ("--solvers", "--planners") else int, None, True)
         for flag in ("--solvers", "--devices", "--batches", "--envs", "--agents", "--planners")}


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jaxsplit bench", description=__doc__.splitlines()[0].split(": ", 1)[1],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("section", help=f"what to measure: {' | '.join(CHOICES)}")
    p.add_argument("--quick", action="store_true", help="small settings (a smoke run: under a minute on a 2-core CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object (machine, settings, rows)")
    p.add_argument("--solvers", help=f"split: comma-separated solvers ({', '.join(bench.bench_solvers())})")
    p.add_argument("--devices", help="split, plan and env: comma-separated device counts N")
    p.add_argument("--batches", help="split and plan: comma-separated batch sizes (layer instances, or clusters, per call)")
    p.add_argument("--envs", help="env: comma-separated numbers of parallel environments")
    p.add_argument("--planners", help="env: comma-separated planners of the environment, measured side by side "
                                      "(layer, fused; default: layer)")
    p.add_argument("--steps-per-call", help="env: environment steps per timed call, all environments together "
                                             "(each runs steps-per-call / envs steps, 1 to 200)")
    p.add_argument("--agents", help="train: comma-separated population sizes (1: one jit(train))")
    p.add_argument("--updates", help="train: PPO updates per timed call")
    p.add_argument("--repeats", help="timed runs per row (the best gives the rate)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on standard error (default: when it is a terminal and not --json)")
    return p


def settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The sections to run and their keyword arguments (ValueError naming a bad option)."""
    if args.section not in CHOICES:
        raise ValueError(f"field 'section': unknown bench {args.section!r}; known: {', '.join(CHOICES)}")
    chosen = bench.quick_settings() if args.quick else bench.full_settings()
    if args.solvers is not None:
        chosen["split"]["solver_names"] = bench.check_solvers(s.strip() for s in args.solvers.split(",") if s.strip())
    if args.devices is not None:
        chosen["split"]["devices"] = chosen["env"]["devices"] = chosen["plan"]["devices"] = _ints("devices")(args.devices)
    if args.batches is not None:
        chosen["split"]["batches"] = chosen["plan"]["batches"] = _ints("batches")(args.batches)
    if args.envs is not None:
        chosen["env"]["num_envs"] = _ints("envs")(args.envs)
    if args.planners is not None:
        planners = tuple(p.strip() for p in args.planners.split(",") if p.strip())
        bad = [p for p in planners if p not in ("layer", "fused")]
        if bad or not planners:
            raise ValueError(f"field 'planners': expected layer and/or fused, got {args.planners!r}")
        chosen["env"]["planners"] = planners
    if args.steps_per_call is not None:
        (chosen["env"]["steps_per_call"],) = _ints("steps-per-call")(args.steps_per_call)
    if args.agents is not None:
        chosen["train"]["agents"] = _ints("agents")(args.agents)
    if args.updates is not None:
        (chosen["train"]["updates"],) = _ints("updates")(args.updates)
        chosen["train"].pop("pop_updates", None)
    if args.repeats is not None:
        (repeats,) = _ints("repeats")(args.repeats)
        for section in chosen.values():
            section["repeats"] = repeats
    names = bench.SECTIONS if args.section == "all" else (args.section,)
    return {name: chosen[name] for name in names}


def _table(console, title: str, rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*(format(row[key], fmt) for key, _, fmt in columns))
    console.print(table)


TIMING = [("compile_s", "compile (s)", ".2f"), ("best_s", "best run (s)", ".4f"), ("spread", "spread", ".1%")]
COLUMNS = {
    "split": [("solver", "solver", ""), ("devices", "N", "d"), ("batch", "batch", ",d"), *TIMING,
              ("solves_per_s", "layer-solves/s", ",.0f"), ("gap_median", "gap median", ".3%"),
              ("gap_p99", "gap p99", ".3%"), ("gap_max", "gap max", ".3%")],
    "plan": [("model", "model", ""), ("devices", "N", "d"), ("batch", "batch", ",d"), *TIMING,
             ("plans_per_s", "best plans/s", ",.0f"), ("gap_median", "gap median", ".3%"), ("gap_p99", "gap p99", ".3%"),
             ("gap_max", "gap max", ".3%"), ("speedup_median", "x per-layer", ".3f")],
    "env": [("planner", "planner", ""), ("devices", "N", "d"), ("envs", "envs", ",d"), ("length", "steps per call", "d"), *TIMING,
            ("steps_per_s", "env steps/s", ",.0f")],
    "train": [("agents", "agents", "d"), ("updates", "updates", "d"), ("steps", "env steps", ",d"), *TIMING,
              ("steps_per_s", "env steps/s", ",.0f")],
}
TITLES = {"split": "split solvers (batched, jitted)",
          "plan": "best plans (fused segments and channel splits, closed form; gap to the exact best plan)", "env": "allocation environment, random policy",
          "train": "PPO training (jaxsplit train defaults)"}


class _Bar:
    """A rich progress bar on standard error for one section's rows (cleared when done)."""

    def __init__(self, section: str, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from jaxsplit.console import make_console

        self.progress = Progress(TextColumn(f"bench {section}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.description}"),
                                 console=make_console(stderr=True), transient=True)
        self.task = self.progress.add_task("compiling...", total=total)
        self.progress.start()

    def advance(self, label: str) -> None:
        self.progress.update(self.task, advance=1, description=f"{label} done")

    def close(self) -> None:
        self.progress.stop()


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(options.spell_lists(argv, LISTS, positionals=True))
    plan = settings(args)
    show = args.progress if args.progress is not None else (sys.stderr.isatty() and not args.json)
    machine = bench.machine_info()
    if not args.json:
        print(f"machine: {bench.machine_line(machine)}", flush=True)
    results: dict[str, Any] = {"machine": machine, "quick": args.quick,
                               "settings": {k: {n: list(v) if isinstance(v, tuple) else v for n, v in s.items()}
                                            for k, s in plan.items()}}
    from jaxsplit.console import make_console

    console = make_console()
    for name, kwargs in plan.items():
        bar = _Bar(name, bench.row_count(name, kwargs)) if show else None
        try:
            rows = bench.RUNNERS[name](progress=bar and bar.advance, **kwargs)
        finally:
            if bar is not None:
                bar.close()
        results[name] = rows
        if not args.json:
            _table(console, TITLES[name], rows, COLUMNS[name])
    if args.json:
        print(json.dumps(results))
    return 0
