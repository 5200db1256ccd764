"""``jaxsplit sweep``: a hyperparameter search, each batch of trials trained as one population.

Optuna proposes the trials (``--sampler tpe|random|cmaes|grid``, or ``--schedule pbt`` for
population-based training); the fixed settings are every ``jaxsplit train`` flag; the searched ones
are ``--space NAME=LOW:HIGH[:log]`` or ``NAME=v1,v2,...`` (repeatable) or a TOML ``--space-file``. The
same command again continues the study; the same command on several machines with one
``--storage postgresql://...`` and ``--study NAME`` shares the trials between them. See
:mod:`jaxsplit.agents.sweep` for the sweep folder.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import tyro

from jaxsplit.agents import space as space_mod
from jaxsplit.agents.ppo import PPOConfig, deferred_checks
from jaxsplit.agents.sweep import NothingToDo, Sweep, SweepSettings
from jaxsplit.envs import EnvSpec

from . import options


@dataclass
class SweepArgs:
    """Search PPO hyperparameters (and scalar environment parameters) with Optuna, a population at a time."""

    out: Path = Path("runs/sweep")
    """sweep folder: study.db, trials.jsonl, leaderboard.md, plots, best/ (a run folder)"""
    study: str = "sweep"
    """study name inside the storage (the same name continues it)"""
    storage: str | None = None
    """database URL shared by the workers (sqlite:///FILE, postgresql://USER@HOST/DB); default OUT/study.db"""
    space: tyro.conf.UseAppendAction[tuple[str, ...]] = ()
    """a searched setting: NAME=LOW:HIGH, NAME=LOW:HIGH:log or NAME=v1,v2,... (repeatable)"""
    space_file: Path | None = None
    """a TOML file with a [space] table (NAME = "LOW:HIGH[:log]" or a list)"""
    baselines: str | None = field(default=None, metadata=options.LIST)
    """comma-separated baselines of the leaderboard (default: every baseline)"""
    progress: bool = True
    """show a progress bar (otherwise one line per population)"""
    sweep: tyro.conf.OmitArgPrefixes[SweepSettings] = field(default_factory=SweepSettings)
    environment: tyro.conf.OmitArgPrefixes[EnvSpec] = field(default_factory=EnvSpec)
    ppo: tyro.conf.OmitArgPrefixes[PPOConfig] = field(default_factory=PPOConfig)

    def dimensions(self) -> list[space_mod.Dimension]:
        dims = [space_mod.parse_dimension(text) for text in self.space]
        if self.space_file is not None:
            dims += space_mod.load_space_file(self.space_file)
        return dims


class _Progress:
    """One bar over trials: complete / wanted, the best objective, steps/s of the present population."""

    def __init__(self, total: int, enabled: bool):
        self.enabled, self.best, self.complete, self.rate = enabled, None, 0, 0.0
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.fields[info]}"))
            self.task = self.bar.add_task("sweep", total=total, info="compiling...")
            self.bar.start()

    def _info(self) -> str:
        best = "-" if self.best is None else f"{self.best:.4g} s"
        return f"best {best}  {self.rate:,.0f} steps/s"

    def __call__(self, event: dict) -> None:
        if event["event"] == "chunk":
            self.rate = event["steps_per_s"]
            text = f"population: update {event['update']}/{event['updates']}  {self._info()}"
        else:
            self.complete, self.best = event["complete"], event["best"]
            text = f"{self.complete}/{event['trials']} trials complete  {self._info()}"
        if self.enabled:
            self.bar.update(self.task, completed=self.complete, info=text)
        elif event["event"] == "batch":
            print(text, flush=True)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()


def _database_error(err: BaseException) -> bool:
    """An error of the study's database (Optuna's storage or SQLAlchemy), not of the sweep itself."""
    import optuna
    import sqlalchemy.exc

    return isinstance(err, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.DatabaseError))


def _terminate(signum, frame):  # a batch scheduler's SIGTERM ends the sweep as Ctrl-C does
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    with deferred_checks():  # Sweep checks the PPO settings, so that a bad value is one line naming the field
        args = options.parse(SweepArgs, sys.argv[1:] if argv is None else argv, "jaxsplit sweep")
    if str(args.out) in ("", "."):
        raise ValueError(f"--out: give the sweep its own folder, got {str(args.out)!r}")
    baselines = None if args.baselines is None else [b.strip() for b in args.baselines.split(",") if b.strip()]
    spec = args.environment
    if spec.cluster is not None:
        spec = EnvSpec(**{**spec.__dict__, "cluster": str(Path(spec.cluster).resolve())})
    spec.overrides()
    progress = _Progress(args.sweep.trials, args.progress and sys.stderr.isatty())
    sweep = Sweep(args.out, spec, args.ppo, args.dimensions(), args.sweep, study=args.study,
                  storage=args.storage, baselines=baselines, on_progress=progress)
    previous = signal.signal(signal.SIGTERM, _terminate)
    t0 = time.perf_counter()
    try:
        sweep.run()
    except NothingToDo as done:
        print(str(done))
        return 0
    except Exception as err:  # a database damaged or gone while the sweep reads it
        if not _database_error(err):
            raise
        from jaxsplit.agents.sweep import storage_reason

        option = "--storage" if args.storage else "--out"
        shown = args.storage.split("@")[-1] if args.storage else str(args.out / "study.db")
        raise ValueError(f"{option} {shown!r}: the study database failed ({storage_reason(err)})") from None
    finally:
        progress.close()
        signal.signal(signal.SIGTERM, previous)
    print((args.out / "leaderboard.md").read_text())
    print(f"sweep {args.study!r}: {args.sweep.trials} trials complete in the study after {time.perf_counter() - t0:.0f} s; "
          f"best run folder {args.out / 'best'}")
    return 0
