"""``jaxsplit train``: train a PPO allocation policy, evaluate it against every baseline, write a report.

The options are the run's (``--out``, ``--seed``, logging, checkpoints, the final evaluation), the
environment's (:class:`jaxsplit.envs.EnvSpec`: ``--env``, ``--cluster``, ``--models``, ``--loads``, the
action form, ...) and PPO's (:class:`jaxsplit.agents.ppo.PPOConfig`), each declared once there with its
default and help. The run folder (``--out``) receives config.json, metrics.jsonl (one line per update),
checkpoints/ (orbax, every ``--checkpoint-every`` updates and at the end), evaluation.json, report.md,
training_curve.png and latency_vs_load.png. ``--resume`` continues an interrupted run from its newest
checkpoint and ends with exactly the parameters of an uninterrupted run.

The final evaluation is ``jaxsplit evaluate --checkpoint RUN`` with every baseline; report.md prints
that command, and running it reproduces the report's table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import tyro

from jaxsplit.agents import checkpoint, report
from jaxsplit.agents.ppo import PPOConfig, deferred_checks
from jaxsplit import atomic, contract
from jaxsplit.agents.run import (STAGE_PREFIX, check_run_dir, holds_run, read_metrics, replace_run, run_lock,
                                 train_run)
from jaxsplit.envs import EnvSpec, Protocol, policies

from . import evaluate as evaluate_cmd
from . import options


@dataclass
class TrainArgs:
    """Train a PPO allocation policy (the main job)."""

    out: Path = Path("runs/ppo")
    """run folder: config, metrics.jsonl, checkpoints/, report.md and plots (refused when it holds another
    run's files, unless --resume or --overwrite)"""
    seed: int = 0
    """random seed (same seed, same parameters)"""
    log_every: int = 10
    """updates per jitted chunk: progress and metrics are written after each"""
    checkpoint_every: int = 100
    """save a checkpoint every this many updates (and at the end)"""
    resume: bool = False
    """continue the run in --out from its newest checkpoint"""
    overwrite: bool = False
    """replace the run files (config, metrics, checkpoints, report, plots) already in --out"""
    eval_policies: tuple[str, ...] = tuple(policies.POLICIES)
    """baseline policies of the final evaluation"""
    eval_loads: tuple[float, ...] = field(default_factory=lambda: Protocol().loads)
    """offered loads of the final evaluation"""
    eval_episodes: int = field(default_factory=lambda: Protocol().episodes)
    """episodes per load and policy in the final evaluation"""
    eval_requests: int = field(default_factory=lambda: Protocol().requests)
    """requests per episode in the final evaluation"""
    eval_warmup: float = field(default_factory=lambda: Protocol().warmup)
    """fraction of each evaluation episode's first requests left out of the metrics"""
    eval_seed: int = field(default_factory=lambda: Protocol().seed)
    """seed of the final evaluation's episodes (the same for every policy, whatever --seed)"""
    skip_eval: bool = False
    """skip the final evaluation and report"""
    progress: bool = True
    """show a progress bar"""
    environment: tyro.conf.OmitArgPrefixes[EnvSpec] = field(default_factory=EnvSpec)
    ppo: tyro.conf.OmitArgPrefixes[PPOConfig] = field(default_factory=PPOConfig)


class _Progress:
    """A rich progress bar with steps/s, reward and mean latency."""

    def __init__(self, total_steps: int, start_steps: int, enabled: bool):
        self.enabled = enabled
        self.t0, self.s0 = time.perf_counter(), start_steps
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.fields[info]}"))
            self.task = self.bar.add_task("train", total=total_steps, completed=start_steps, info="compiling...")
            self.bar.start()

    def __call__(self, row: dict) -> None:
        rate = (row["env_steps"] - self.s0) / max(time.perf_counter() - self.t0, 1e-9)
        info = f"{rate:,.0f} steps/s  reward {row['reward']:.3f}"
        if "latency" in row:
            info += f"  latency {row['latency']:.3f} s"
        if self.enabled:
            self.bar.update(self.task, completed=row["env_steps"], info=info)
        else:
            print(f"update {row['update']}  steps {row['env_steps']}  {info}", flush=True)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()


def validate(args: TrainArgs) -> None:
    """ValueError naming the first bad option."""
    for name in ("log_every", "checkpoint_every", "eval_episodes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.eval_requests < 2:
        raise ValueError(f"--eval-requests must be >= 2, got {args.eval_requests}")
    if not 0.0 <= args.eval_warmup < 1.0:
        raise ValueError(f"--eval-warmup must be in [0, 1), got {args.eval_warmup}")
    if not args.eval_loads or any(not (load > 0) for load in args.eval_loads):
        raise ValueError(f"--eval-loads must be positive, got {args.eval_loads}")
    for name in args.eval_policies:
        if name not in policies.POLICIES:
            raise ValueError(f"--eval-policies: unknown baseline {name!r}; known: {', '.join(policies.POLICIES)}")
    contract.check_seed(args.seed)
    args.ppo.validate()
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")


def protocol(args: TrainArgs) -> Protocol:
    """The evaluation protocol of the final evaluation (the ``--eval-*`` options)."""
    return Protocol(tuple(float(x) for x in args.eval_loads), args.eval_episodes, args.eval_requests,
                    args.eval_warmup, args.eval_seed)


def final_evaluation(args: TrainArgs, devices: int | None = None, run_dir: Path | None = None) -> tuple[list[dict], str]:
    """Every baseline and the run's policy through ``jaxsplit evaluate``; (records, its command line).
    ``devices``: evaluate on clusters of exactly that many devices (a generalist's report);
    ``run_dir``: where the run is read from now (default ``--out``; the command names ``--out``)."""
    names = list(args.eval_policies) + [evaluate_cmd.CHECKPOINT_POLICY]
    text = None if devices is None else str(devices)
    eval_args = evaluate_cmd.EvaluateArgs(
        policy=",".join(names), loads=tuple(args.eval_loads), episodes=args.eval_episodes,
        requests=args.eval_requests, seed=args.eval_seed, warmup=args.eval_warmup,
        checkpoint=(str(args.out if run_dir is None else run_dir),), devices=text)
    command = evaluate_cmd.command_line(str(args.out), names, args.eval_loads, args.eval_episodes,
                                        args.eval_requests, args.eval_seed, args.eval_warmup)
    if devices is not None:
        command += f" --devices {devices}"
    return evaluate_cmd.run(eval_args), command


def report_device_counts(spec: EnvSpec) -> list[int]:
    """The device counts a run's report covers: for a policy trained on a range of device counts (the
    "sets" observation), the smallest and the largest of the range; else none (the run's cluster)."""
    env, params = spec.base()
    if getattr(env, "layout", None) is None:
        return []
    lo, hi = int(params.devices_min), int(params.devices_max)
    return sorted({lo, hi})


def _empty_out(argv: Sequence[str]) -> bool:
    """``--out ''`` (a Path of '' reads as the current folder, so the raw argument is checked)."""
    words = list(argv)
    return "--out=" in words or any(w == "--out" and i + 1 < len(words) and not words[i + 1].strip()
                                    for i, w in enumerate(words))


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    if _empty_out(sys.argv[1:] if argv is None else argv):
        raise ValueError("--out: an empty path; name a run folder")
    with deferred_checks():  # checked below, so that a bad value is one line naming the field
        args = options.parse(TrainArgs, sys.argv[1:] if argv is None else argv, "jaxsplit train")
    validate(args)
    spec, config = args.environment, args.ppo
    if spec.cluster is not None:  # the run folder must rebuild the environment wherever it is evaluated from
        spec = dataclasses.replace(spec, cluster=str(Path(spec.cluster).resolve()))
    spec.overrides()  # a bad environment option fails before anything is written
    # an empty path, a file or a path under one is refused before anything is touched
    out = check_run_dir(args.out, resume=True)
    env, env_params = spec.make()  # the environment, models and cluster: accepted before anything is touched
    if not (args.resume or args.overwrite):
        check_run_dir(out)  # another run's files: refused before the lock file is made (again under the lock)
    with run_lock(out):
        stage = None
        if args.overwrite and holds_run(out):  # the new run is written beside the old one and swapped in at the end
            stage = out / f"{STAGE_PREFIX}{os.getpid()}"
        elif not args.resume:
            check_run_dir(out)
        text = _train_and_report(args, spec, config, out, stage or out, env, env_params)
        if stage is not None:
            replace_run(stage, out)
    print(text)
    return 0


def _train_and_report(args: TrainArgs, spec: EnvSpec, config: PPOConfig, out: Path, where: Path, env, env_params) -> str:
    """Train into ``where`` (``out``, or the folder beside it that replaces its run at the end), then
    evaluate and report; returns what to print."""
    start = 0
    if args.resume:
        start = (checkpoint.latest_step(out) or 0) * config.batch_size
    progress = _Progress(config.num_updates * config.batch_size, start, args.progress)
    try:
        train_run(config, where, spec, seed=args.seed, resume=args.resume, log_every=args.log_every,
                  checkpoint_every=args.checkpoint_every, on_chunk=progress, env=env, env_params=env_params)
    finally:
        progress.close()
    rows = read_metrics(where)
    report.plot_training(rows, where / "training_curve.png")
    if args.skip_eval:
        return f"trained {config.num_updates} updates; run folder {out}"
    counts = report_device_counts(spec)
    if not counts:
        results, command = final_evaluation(args, run_dir=where)
        extra = []
    else:  # a generalist: one evaluation per device count; the first is the report's main table
        sections = []
        for n in counts:
            recs, cmd = final_evaluation(args, n, run_dir=where)
            sections.append((f"{n} devices", [dict(r, devices=n) for r in recs], cmd))
        (_, results, command), extra = sections[0], sections[1:]
    records = results + [r for _, recs, _ in extra for r in recs]
    atomic.write_text(where / "evaluation.json",
                      json.dumps(json.loads(evaluate_cmd.json_records(records)), indent=2, allow_nan=False) + "\n")
    evaluate_cmd.plot(results, str(where / "latency_vs_load.png"))
    return report.write_report(where, spec, config, rows, results, command, extra=extra,
                               title=f"{counts[0]} devices" if counts else None, name=out.name,
                               protocol=protocol(args))
