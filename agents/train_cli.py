"""``jaxsplit train``: train a PPO allocation policy, evaluate it against every baseline, write a report.

The run folder (``--out``) receives config.json, metrics.jsonl (one line per update), checkpoints/
(orbax, every ``--checkpoint-every`` updates and at the end), evaluation.json, report.md,
training_curve.png and latency_vs_load.png. ``--resume`` continues an interrupted run from its
newest checkpoint and ends with exactly the parameters of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import tyro

from .ppo import PPOConfig


@dataclass
class TrainArgs:
    """Train a PPO allocation policy (the main job)."""

    out: Path = Path("runs/ppo")
    """run folder: config, metrics.jsonl, checkpoints/, report.md and plots"""
    env: str = "alloc-v0"
    """environment name (alloc-v0: 4 devices, alloc-n8-v0: 8 devices)"""
    split: Literal["closed_form", "equal"] = "closed_form"
    """split rule inside the environment (equal: the ablation)"""
    models: str | None = None
    """comma-separated catalogue to train on (default: the environment's)"""
    reward_scale: Literal["mean", "model"] = "mean"
    """latency in the training reward divided by the episode's mean E_ref (mean: the return is minus the
    total latency, so PPO minimises mean latency) or by the request's model's E_ref (model: MODEL.md)"""
    observation: Literal["summary", "table"] = "table"
    """what the policy sees: summary (MODEL.md: per device the free share and its next release) or table
    (the same plus the whole reservation table: remaining time and shares of every held reservation)"""
    total_timesteps: int = 24_000_000
    """environment steps over the whole run"""
    num_envs: int = 512
    """environments stepped in parallel"""
    num_steps: int = 64
    """rollout length per update (steps per environment)"""
    update_epochs: int = 4
    """passes over each rollout"""
    num_minibatches: int = 8
    """minibatches per epoch"""
    hidden: tuple[int, ...] = (64, 64)
    """hidden layer widths of the actor and the critic"""
    lr: float = 1e-3
    """Adam learning rate (annealed linearly to 0 unless --no-anneal-lr)"""
    anneal_lr: bool = True
    """decay the learning rate linearly over the run"""
    ent_coef: float = 0.03
    """entropy bonus coefficient"""
    clip_eps: float = 0.2
    """PPO clip range (policy ratio and value)"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    gamma: float = 0.97
    """discount per request"""
    gae_lambda: float = 0.9
    """GAE lambda"""
    max_grad_norm: float = 0.5
    """global gradient norm clip"""
    action: Literal["per_device", "common", "free_clip", "clip_pairs"] = "clip_pairs"
    """per_device: one sampled share per device; common: one share for the request, on every device;
    free_clip: a cap and a floor, every device gives its free share clipped to them; clip_pairs: one
    categorical choice among the (cap, floor) pairs (floor <= cap; floor = cap is a common share)"""
    distribution: Literal["beta", "categorical"] = "categorical"
    """beta: continuous shares rounded to the levels; categorical: sample a share level directly"""
    pair_levels: tuple[float, ...] = (0.1, 0.25, 1 / 3, 0.5, 1.0)
    """share levels of the clip_pairs action, each in (0, 1] (empty: the nonzero levels 1/K, ..., 1/2, 1
    of --share-levels; other actions ignore it)"""
    share_levels: int = 4
    """round sampled shares to the nearest of 0, 1/K, ..., 1/2, 1 (K = this; 0 keeps them continuous)"""
    reward_groups: int = 8
    """offered-load groups with their own reward scale (1: one global scale; see PPOConfig)"""
    init_concentration: float = 10.0
    """concentration c of the initial Beta of every share (alpha = 2 c m, beta = 2 c (1 - m)); larger explores less
    (Beta only; the categorical policy starts uniform over the levels)"""
    init_mean: float = 0.5
    """mean share m of the initial Beta policy"""
    normalize_obs: bool = True
    """standardise observations with running statistics"""
    normalize_reward: bool = True
    """scale rewards by the running std of the discounted return"""
    util_weight: float | None = None
    """utilisation weight of the reward (default: the environment's)"""
    load_min: float | None = None
    """lowest offered load drawn per episode (default: the environment's)"""
    load_max: float | None = None
    """highest offered load drawn per episode (default: the environment's)"""
    seed: int = 0
    """random seed (same seed, same parameters)"""
    log_every: int = 10
    """updates per jitted chunk: progress and metrics are written after each"""
    checkpoint_every: int = 100
    """save a checkpoint every this many updates (and at the end)"""
    resume: bool = False
    """continue the run in --out from its newest checkpoint"""
    eval_loads: tuple[float, ...] = (0.3, 0.6, 0.9, 1.2)
    """offered loads of the final evaluation"""
    eval_episodes: int = 16
    """episodes per load and policy in the final evaluation"""
    skip_eval: bool = False
    """skip the final evaluation and report"""
    progress: bool = True
    """show a progress bar"""


def config_from_args(args: TrainArgs) -> PPOConfig:
    """The PPOConfig of the arguments (ValueError naming a bad field)."""
    overrides: list[tuple[str, object]] = []
    if args.split != "closed_form":
        overrides.append(("split", args.split))
    if args.reward_scale != "model":
        overrides.append(("reward_scale", args.reward_scale))
    if args.observation != "summary":
        overrides.append(("observation", args.observation))
    if args.models is not None:
        names = tuple(m.strip() for m in args.models.split(",") if m.strip())
        if not names:
            raise ValueError(f"--models is empty: {args.models!r}")
        overrides.append(("models", names))
    fields = {f.name for f in dataclasses.fields(PPOConfig)} - {"env_name", "env_overrides"}
    values = {name: getattr(args, name) for name in fields}
    if args.action != "clip_pairs":  # the levels of the pairs mean nothing to the other actions
        values["pair_levels"] = ()
    config = PPOConfig(env_name=args.env, env_overrides=tuple(overrides), **values)
    return config.validate()


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
        info = f"{rate:,.0f} steps/s  reward {row['reward']:.3f}  latency {row['latency']:.3f} s"
        if self.enabled:
            self.bar.update(self.task, completed=row["env_steps"], info=info)
        else:
            print(f"update {row['update']}  steps {row['env_steps']}  {info}", flush=True)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = tyro.cli(TrainArgs, args=argv, prog="jaxsplit train")
    for name in ("log_every", "checkpoint_every", "eval_episodes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.eval_loads or any(not (load > 0) for load in args.eval_loads):
        raise ValueError(f"--eval-loads must be positive, got {args.eval_loads}")
    config = config_from_args(args)
    from . import report
    from .run import read_metrics, train_run

    start = 0
    if args.resume:
        from .checkpoint import latest_step

        start = (latest_step(args.out) or 0) * config.batch_size
    progress = _Progress(config.num_updates * config.batch_size, start, args.progress)
    try:
        trainer, runner = train_run(config, args.out, seed=args.seed, resume=args.resume, log_every=args.log_every,
                                    checkpoint_every=args.checkpoint_every, on_chunk=progress)
    finally:
        progress.close()
    rows = read_metrics(args.out)
    report.plot_training(rows, args.out / "training_curve.png")
    if args.skip_eval:
        print(f"trained {config.num_updates} updates; run folder {args.out}")
        return 0
    results = report.evaluate_against_baselines(trainer, runner, args.eval_loads, args.eval_episodes, args.seed)
    (args.out / "evaluation.json").write_text(json.dumps(results, indent=2) + "\n")
    report.plot_latency_vs_load(results, args.out / "latency_vs_load.png")
    text = report.write_report(args.out, config, rows, results)
    print(text)
    return 0
