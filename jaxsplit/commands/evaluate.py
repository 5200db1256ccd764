"""``jaxsplit evaluate``: baseline and trained allocation policies across offered loads (MODEL.md section 6).

Every policy runs on the same episodes through :func:`jaxsplit.envs.evaluate`, the one evaluation
path. ``--checkpoint RUN_DIR`` adds the trained policy of a ``jaxsplit train`` run folder, named
``ppo`` (``ppo:RUN_DIR`` for several): ``--policy ppo,best_constant,myopic --checkpoint runs/ppo``
compares it with two baselines (the order of ``--policy`` is the order of the rows; without ``ppo`` in
``--policy`` its rows come last). With a checkpoint the environment is the (first) run's, with
``--requests`` per episode; ``--cluster`` and ``--models`` change the cluster and the request mix
(a policy of the "sets" observation, trained on alloc-any-v0, accepts any cluster of up to its N devices and
any models; any other accepts a cluster of the device count it was trained for and a subset of its
catalogue). ``--devices``, ``--churn`` and ``--rejoin`` set how many devices each episode has and how
they come and go.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxsplit import atomic, contract
from jaxsplit.agents.run import evaluation_env, load_policy
from jaxsplit.envs import MAIN, Protocol, evaluate, evaluate_baselines, load_cluster, make, policies
from jaxsplit.envs.evaluation import markdown_table
from jaxsplit.envs.spec import parse_devices, parse_models

from . import options as cli_options

#: the policy name that stands for the ``--checkpoint`` runs in ``--policy``.
CHECKPOINT_POLICY = "ppo"


@dataclasses.dataclass
class EvaluateArgs:
    """Evaluate allocation policies on the allocation environment at several offered loads."""

    policy: str = dataclasses.field(default="whole_cluster,free_now,myopic", metadata=cli_options.LIST)
    """Comma-separated policy names: random, whole_cluster, free_now, constant, best_constant (its share searched
    per load), best_clip (each device's free share clipped to [floor, cap], the pair searched per load; both
    searched on 16 episodes apart from the evaluated ones), fastest_k, myopic, and ppo (the trained policy of
    --checkpoint)."""
    loads: tuple[float, ...] = dataclasses.field(default_factory=lambda: Protocol().loads)
    """Offered loads rho (1 saturates the whole-cluster policy)."""
    cluster: str | None = None
    """JSON file {"devices": [...]} in the instance format (shares ignored): fixes the cluster."""
    models: str | None = dataclasses.field(default=None, metadata=cli_options.LIST)
    """Comma-separated model specs: the request mix (uniform). Default: the environment's (the run's) catalogue.
    A spec is NAME (zoo model at the input size), NAME@H or NAME@HxW (zoo model at that size), PATH.py:FACTORY[@HxW]
    (the torch module FACTORY() returns) or torchvision:NAME[@HxW] (both read by the PyTorch bridge; torch extra).
    With --checkpoint of a sets policy (alloc-any-v0) any specs; of another policy, specs of the run's catalogue."""
    devices: str | None = dataclasses.field(default=None, metadata=cli_options.LIST)
    """Devices per episode LO,HI (or N), at most the environment's N (the others absent). Default: the
    environment's (the run's)."""
    churn: float | None = None
    """Rate at which a device leaves, per device and per mean reference time (default: the environment's)."""
    rejoin: float | None = None
    """Rate at which a device that left comes back, same unit (default: the environment's)."""
    episodes: int = dataclasses.field(default_factory=lambda: Protocol().episodes)
    """Episodes per load (each an independent cluster draw unless the cluster is fixed)."""
    requests: int = dataclasses.field(default_factory=lambda: Protocol().requests)
    """Requests per episode."""
    seed: int = dataclasses.field(default_factory=lambda: Protocol().seed)
    """Random seed of the episodes."""
    warmup: float = dataclasses.field(default_factory=lambda: Protocol().warmup)
    """Fraction of each episode's first requests left out of the metrics."""
    json: bool = False
    """Print a JSON list of records (one per policy and load) instead of a table."""
    markdown: bool = False
    """Print the Markdown table of mean latency +- 95% CI (the table of a run's report.md)."""
    plot: str | None = None
    """Write a PNG of mean latency against load for every policy (95% CI bars) to this file."""
    env: str | None = None
    """Named environment (alloc-main-v0: the main job's, N=4 devices; alloc-v0: the paper's plain model, N=4;
    alloc-n8-v0: N=8). Default: alloc-main-v0, or the run's with --checkpoint."""
    share: float = 0.5
    """The share c of the constant policy."""
    k: int | None = None
    """Number of devices of fastest_k (default ceil(N/2))."""
    checkpoint: tuple[str, ...] = ()
    """Training run folder(s) (jaxsplit train --out): adds the trained policy, named ppo (ppo:RUN_DIR for
    several), evaluated on the same episodes as the baselines."""


def _floats(text: str | Sequence[float], field: str) -> list[float]:
    try:
        values = [float(v) for v in (cli_options.split_values([text]) if isinstance(text, str) else text)]
    except ValueError:
        raise ValueError(f"field '{field}': expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"field '{field}': empty list")
    for v in values:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"field '{field}': every value must be positive, got {v!r}")
    return list(contract.check_loads(values, field))  # each in [1e-6, 1e6] (docs/MODEL.md, section 8)


def run(args: EvaluateArgs) -> list[dict[str, Any]]:
    """Evaluate every requested policy; the records of :func:`jaxsplit.envs.evaluate`, in order."""
    names = _policy_names(args)
    _check_numbers(args)
    cluster = load_cluster(args.cluster) if args.cluster else None
    # with a checkpoint, a spec outside the run's catalogue is refused by evaluation_env (which says why)
    models = parse_models(args.models, check=not args.checkpoint) if args.models else None
    env_params: dict[str, Any] = {}
    if args.devices is not None:
        env_params["devices_min"], env_params["devices_max"] = parse_devices(args.devices)
    for name in ("churn", "rejoin"):
        if getattr(args, name) is not None:
            env_params[name] = getattr(args, name)
    learned = []
    if args.checkpoint:  # load every run first, so that a bad one fails before any evaluation
        if args.env is not None:
            raise ValueError("field 'env': with --checkpoint the environment is the run's; change the cluster "
                             "with --cluster and the request mix with --models")
        for run_dir in args.checkpoint:
            fn, p_env, p_params = load_policy(run_dir, args.requests, cluster, models, env_params)
            label = CHECKPOINT_POLICY if len(args.checkpoint) == 1 else f"{CHECKPOINT_POLICY}:{run_dir}"
            learned.append((label, fn, p_env, p_params))
        _, _, env, params = evaluation_env(args.checkpoint[0], args.requests, cluster, models, env_params)
    else:
        overrides: dict[str, Any] = {"requests": args.requests, **env_params}
        if cluster is not None:
            overrides["cluster"] = cluster
        if models is not None:
            overrides["models"] = models
        env, params = make(args.env or MAIN, **overrides)
    common = dict(protocol=protocol(args))
    options: dict[str, dict[str, Any]] = {"constant": {"c": args.share}}
    if args.k is not None:
        options["fastest_k"] = {"k": args.k}
    # every baseline from one compiled program (a branch each), the records in the order asked for
    named = [name for name in dict.fromkeys(names) if name != CHECKPOINT_POLICY]
    baseline_rows = evaluate_baselines(named, env, params, options=options, **common) if named else []
    rows = []
    for name in names:
        if name == CHECKPOINT_POLICY:
            for label, fn, p_env, p_params in learned:
                rows += evaluate(fn, p_env, p_params, name=label, **common)
        else:
            rows += [r for r in baseline_rows if r["policy"] == name]
    return rows


def _policy_names(args: EvaluateArgs) -> list[str]:
    """The policies asked for, checked, in order (the trained one last when only --checkpoint names it)."""
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
    return names


def _check_numbers(args: EvaluateArgs) -> None:
    """Refuse a load, count or share outside its range, naming the option."""
    _floats(args.loads, "loads")
    if args.episodes < 1:
        raise ValueError(f"field 'episodes': must be positive, got {args.episodes}")
    if args.requests < 2:
        raise ValueError(f"field 'requests': must be at least 2, got {args.requests}")
    if not 0.0 <= args.warmup < 1.0:
        raise ValueError(f"field 'warmup': must be in [0, 1), got {args.warmup}")
    if not 0.0 <= args.share <= 1.0:
        raise ValueError(f"field 'share': must be in [0, 1], got {args.share}")


def protocol(args: EvaluateArgs) -> Protocol:
    """The evaluation protocol of the options (checked)."""
    return Protocol(tuple(_floats(args.loads, "loads")), args.episodes, args.requests, args.warmup, args.seed).check()


def command_line(run_dir: str, policies_: Sequence[str], loads: Sequence[float], episodes: int, requests: int,
                 seed: int, warmup: float) -> str:
    """The ``jaxsplit evaluate`` command that evaluates ``policies_`` and a run's policy as given."""
    return (f"jaxsplit evaluate --checkpoint {run_dir} --policy {','.join(policies_)} "
            f"--loads {','.join(f'{x:g}' for x in loads)} --episodes {episodes} --requests {requests} "
            f"--seed {seed} --warmup {warmup:g} --markdown")


def print_table(rows: list[dict[str, Any]], protocol: Protocol | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    title = "allocation policies (mean over episodes, +- 95% CI)"
    if protocol is not None:
        title += f"; {protocol.describe()}"
    table = Table(title=title, title_justify="left")
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


def plot(rows: list[dict[str, Any]], path: str, highlight: str = CHECKPOINT_POLICY) -> None:
    """Mean latency against load, one line per policy, with 95% CI bars (``highlight`` drawn bold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in dict.fromkeys(r["policy"] for r in rows):
        sel = sorted((r for r in rows if r["policy"] == name), key=lambda r: r["load"])
        ax.errorbar([r["load"] for r in sel], [r["mean_latency_s"] for r in sel],
                    yerr=[0.0 if not np.isfinite(r["mean_latency_s_ci"]) else r["mean_latency_s_ci"] for r in sel],
                    marker="o", ms=3, capsize=2, lw=2.2 if name.startswith(highlight) else 1, label=name)
    ax.set_xlabel("offered load rho")
    ax.set_ylabel("mean latency (s)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        atomic.savefig(fig, path, dpi=120)
    except OSError as err:
        raise ValueError(f"field 'plot': cannot write {path!r}: {err.strerror}") from None
    finally:
        plt.close(fig)


PLOT_FORMATS = (".png", ".pdf", ".svg")


def check_plot_path(path: str) -> None:
    """Refuse a plot path that is a folder, has no image suffix, or lies in no folder (before any work)."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"field 'plot': {path!r} is a folder; name an image file such as {str(p / 'latency.png')!r}")
    if p.suffix.lower() not in PLOT_FORMATS:
        raise ValueError(f"field 'plot': {path!r} must end in {', '.join(PLOT_FORMATS)}")
    if not p.absolute().parent.is_dir():
        raise ValueError(f"field 'plot': cannot write {path!r}: no folder {str(p.parent)!r}")


def json_records(rows: list[dict[str, Any]]) -> str:
    """The records as one JSON list (non-finite numbers as null)."""
    clean = [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()} for r in rows]
    return json.dumps(clean)


def main(argv: Sequence[str]) -> int:
    args = cli_options.parse(EvaluateArgs, list(argv), "jaxsplit evaluate")
    if args.plot:
        check_plot_path(args.plot)
    rows = run(args)
    if args.plot:
        plot(rows, args.plot)
    if args.json:
        sys.stdout.write(json_records(rows) + "\n")
    elif args.markdown:
        sys.stdout.write(markdown_table(rows) + "\n")
    else:
        print_table(rows, protocol(args))
    return 0
