"""``jaxsplit evaluate``: baseline (and learned) allocation policies across loads (MODEL.md section 6).

``--checkpoint RUN_DIR`` adds a trained policy, named ``ppo``, to the policies: ``--policy
ppo,best_constant,myopic --checkpoint runs/ppo`` compares it with two baselines on the same episodes
(the order of ``--policy`` is the order of the rows; without ``ppo`` in ``--policy`` its rows come
last). The policy runs in the same environment as the baselines (``--env``, ``--cluster``,
``--models``, ``--requests``), which must have the run's number of devices and catalogue.

Policy sources plug in through :func:`register_checkpoint_loader`: a loader
``loader(run_dir, env_name, overrides) -> (label, env, params, policy_fn)`` turns a training run
directory into an observation policy ``policy_fn(key, obs) -> action`` and the environment to run it
in. When none is registered, ``jaxsplit.agents.run`` is imported: it registers the PPO loader
(:func:`jaxsplit.agents.run.checkpoint_loader`). This package never imports the agents otherwise.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import sys
from typing import Any, Callable, Sequence

import numpy as np
import tyro

#: loader(run_dir, env_name, overrides) -> (label, env, params, policy_fn(key, obs) -> action)
CheckpointLoader = Callable[[str, str, dict], tuple[str, Any, Any, Callable]]
_CHECKPOINT_LOADERS: list[CheckpointLoader] = []


def register_checkpoint_loader(loader: CheckpointLoader) -> None:
    """Let ``--checkpoint RUN_DIR`` evaluate learned policies (the last registered loader is used;
    registering a loader that is already registered does nothing)."""
    if loader not in _CHECKPOINT_LOADERS:
        _CHECKPOINT_LOADERS.append(loader)


#: the policy name that stands for the ``--checkpoint`` runs in ``--policy``.
CHECKPOINT_POLICY = "ppo"


def checkpoint_loader() -> CheckpointLoader:
    """The last registered loader; imports ``jaxsplit.agents.run`` (which registers one) when none is."""
    if not _CHECKPOINT_LOADERS:
        try:
            module = importlib.import_module("jaxsplit.agents.run")
        except ImportError as err:
            raise ValueError(f"field 'checkpoint': no checkpoint loader is registered and jaxsplit.agents "
                             f"cannot be imported ({err})") from None
        if not _CHECKPOINT_LOADERS:  # imported before, while another list of loaders was in place
            register_checkpoint_loader(module.checkpoint_loader)
    return _CHECKPOINT_LOADERS[-1]


@dataclasses.dataclass
class EvaluateArgs:
    """Evaluate allocation policies on the allocation environment at several offered loads."""

    policy: str = "whole_cluster,free_now,myopic"
    """Comma-separated policy names: random, whole_cluster, free_now, constant, best_constant, fastest_k, myopic,
    and ppo (the trained policy of --checkpoint)."""
    loads: str = "0.3,0.9,1.2"
    """Comma-separated offered loads rho (1 saturates the whole-cluster policy)."""
    cluster: str | None = None
    """JSON file {"devices": [...]} in the instance format (shares ignored): fixes the cluster."""
    models: str | None = None
    """Comma-separated zoo models: fixes the catalogue (uniform mix). Default: the environment's."""
    episodes: int = 8
    """Episodes per load (each an independent cluster draw unless --cluster is given)."""
    requests: int = 500
    """Requests per episode."""
    seed: int = 0
    """Random seed."""
    json: bool = False
    """Print a JSON list of objects (one per policy and load) instead of a table."""
    plot: str | None = None
    """Write a PNG of mean latency against load for every policy (95% CI bars)."""
    env: str = "alloc-v0"
    """Registered environment name (alloc-v0: N=4 devices; alloc-n8-v0: N=8)."""
    share: float = 0.5
    """The share c of the constant policy."""
    k: int | None = None
    """Number of devices of fastest_k (default ceil(N/2))."""
    checkpoint: tuple[str, ...] = ()
    """Training run folder(s) (jaxsplit train --out): adds the trained policy, named ppo (ppo:RUN_DIR for
    several), evaluated on the same episodes as the baselines."""
    warmup: float = 0.1
    """Fraction of each episode's first requests left out of the metrics."""


def _floats(text: str, field: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"field '{field}': expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"field '{field}': empty list")
    for v in values:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"field '{field}': every value must be positive, got {v!r}")
    return values


def load_cluster(path: str) -> tuple[list[float], list[float], list[float]]:
    """(flops, bandwidth, latency) of a JSON file ``{"devices": [...]}`` (instance format)."""
    from jaxsplit.instance import parse_devices

    try:
        with open(path) as fh:
            obj = json.load(fh)
    except OSError as err:
        raise ValueError(f"field 'cluster': cannot read {path!r}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"field 'cluster': {path!r} is not JSON: {err}") from None
    if not isinstance(obj, dict) or "devices" not in obj:
        raise ValueError(f"field 'cluster': {path!r} needs an object with a 'devices' list")
    devices = parse_devices(obj["devices"], f"{path}: ", shares=False)
    bw = [math.inf if d.bandwidth is None else float(d.bandwidth) for d in devices]
    return [float(d.flops) for d in devices], bw, [float(d.latency) for d in devices]


def run(args: EvaluateArgs) -> list[dict[str, Any]]:
    """Evaluate every requested policy; rows as :func:`jaxsplit.envs.evaluate` returns them."""
    from . import evaluate, make, policies

    names = [p.strip() for p in args.policy.split(",") if p.strip()]
    for name in names:
        if name == CHECKPOINT_POLICY:
            if not args.checkpoint:
                raise ValueError(f"field 'policy': {CHECKPOINT_POLICY!r} is the trained policy of a run folder; "
                                 f"pass --checkpoint RUN_DIR")
        elif name not in policies.POLICIES:
            raise ValueError(f"field 'policy': unknown policy {name!r}; known: {', '.join(policies.POLICIES)}, "
                             f"{CHECKPOINT_POLICY} (with --checkpoint)")
    if args.checkpoint and CHECKPOINT_POLICY not in names:
        names.append(CHECKPOINT_POLICY)
    if not names:
        raise ValueError("field 'policy': no policy given")
    loads = _floats(args.loads, "loads")
    if args.episodes < 1:
        raise ValueError(f"field 'episodes': must be positive, got {args.episodes}")
    if args.requests < 2:
        raise ValueError(f"field 'requests': must be at least 2, got {args.requests}")
    if not 0.0 <= args.share <= 1.0:
        raise ValueError(f"field 'share': must be in [0, 1], got {args.share}")
    overrides: dict[str, Any] = {"requests": args.requests}
    if args.cluster:
        overrides["cluster"] = load_cluster(args.cluster)
    if args.models:
        overrides["models"] = tuple(m.strip() for m in args.models.split(",") if m.strip())
    env, params = make(args.env, **overrides)
    learned = []
    if args.checkpoint:  # load every run first, so that a bad one fails before any evaluation
        loader = checkpoint_loader()
        for run_dir in args.checkpoint:
            label, c_env, c_params, fn = loader(run_dir, args.env, overrides)
            if len(args.checkpoint) > 1:
                label = f"{label}:{run_dir}"
            learned.append((label, c_env, c_params, fn))
    rows = []
    for name in names:
        if name == CHECKPOINT_POLICY:
            for label, c_env, c_params, fn in learned:
                rows += evaluate(fn, c_env, c_params, loads, episodes=args.episodes, seed=args.seed,
                                 warmup=args.warmup, name=label)
            continue
        options: dict[str, Any] = {}
        if name == "constant":
            options["c"] = args.share
        if name == "fastest_k" and args.k is not None:
            options["k"] = args.k
        rows += evaluate(name, env, params, loads, episodes=args.episodes, seed=args.seed, warmup=args.warmup,
                         **options)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="allocation policies (mean over episodes, +- 95% CI)", title_justify="left")
    for col in ("policy", "load", "mean latency (s)", "p95 (s)", "p99 (s)", "norm. latency", "utilization",
                "request U", "throughput (1/s)", "invalid"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    f = lambda r, k, d=3: f"{r[k]:.{d}f}±{r[k + '_ci']:.{d}f}"
    for r in rows:
        table.add_row(r["policy"], f"{r['load']:g}", f(r, "mean_latency_s"), f(r, "p95_latency_s"),
                      f(r, "p99_latency_s"), f(r, "normalized_latency", 2), f(r, "utilization"),
                      f(r, "request_utilization"), f(r, "throughput_rps", 2), f"{r['invalid_rate']:.3f}")
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """Mean latency against load, one line per policy, with 95% CI bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["policy"] for r in rows):
        sel = [r for r in rows if r["policy"] == name]
        ax.errorbar([r["load"] for r in sel], [r["mean_latency_s"] for r in sel],
                    yerr=[r["mean_latency_s_ci"] for r in sel], marker="o", capsize=3, label=name)
    ax.set_xlabel("offered load rho")
    ax.set_ylabel("mean latency (s)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as err:
        raise ValueError(f"field 'plot': cannot write {path!r}: {err.strerror}") from None
    finally:
        plt.close(fig)


def main(argv: Sequence[str]) -> int:
    args = tyro.cli(EvaluateArgs, args=list(argv), prog="jaxsplit evaluate")
    rows = run(args)
    if args.plot:
        plot(rows, args.plot)
    if args.json:
        clean = [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()} for r in rows]
        sys.stdout.write(json.dumps(clean) + "\n")
    else:
        print_table(rows)
    return 0
