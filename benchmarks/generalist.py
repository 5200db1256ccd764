"""One policy for any cluster and any model: the generalist (alloc-any-v0) against every baseline and
against specialists, on clusters, churn and models it never saw in training.

What it does:

1. Trains (unless the run folders exist and are complete) ``--seeds`` generalists with
   ``jaxsplit train --env alloc-any-v0`` (2 to 8 devices per episode, churn, the default catalogue at
   three input sizes), and the specialists of ``--specialists`` (``jaxsplit train`` on one device
   count: alloc-v0 for 4 devices, alloc-n8-v0 for 8), each with ``--timesteps`` steps.
2. Evaluates every generalist (deterministic policy) and every baseline of
   ``jaxsplit.envs.policies`` at ``--loads`` on the same episodes, in these conditions:

   - randomised clusters of exactly N devices, N in ``--devices`` (the training ranges of
     capacities; no churn), on the main job's catalogue;
   - fixed clusters none of which was drawn in training (:data:`FIXED_CLUSTERS`, capacities outside
     the training ranges);
   - churn five times the training rate (8 devices);
   - models it never saw, one catalogue each (``--unseen``; resnet50, yolov2_tiny at 224 x 224 and a
     torch module read by the PyTorch bridge, examples/edge_cnn.py).

   Every condition runs in an environment of 8 devices, the absent ones padding (one compiled
   evaluation per policy and catalogue; tests/test_env_presence.py shows that padding changes
   nothing).
3. Compares the generalist with each specialist on the specialist's own episodes, in an environment
   of exactly N devices (the same draws: the environments differ only in the observation and the
   action wrapper; the set network's parameters do not depend on N, and its observation statistics
   are laid out for N by ``Trainer.policy(layout=)``).

The generalist's figure is the mean over seeds of each seed's mean latency (95% t-interval over
seeds when there are two or more); a baseline's is its mean over episodes (95% normal interval).
Goals (the issue's): within 3% of the best baseline at loads <= 0.6, at least 7% below it at loads
>= 0.9, within 2% of the specialist. Results go to benchmarks/generalist.json and the section
"generalist" of benchmarks/RESULTS.md.

    python benchmarks/generalist.py --seeds 5 --specialists 4 8      # the issue's acceptance run (hours on 2 cores)
    python benchmarks/generalist.py --runs runs/gen-s0 --specialist 4=runs/spec-n4   # evaluate existing runs
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import command, git_revision, machine, record  # noqa: E402

from jaxsplit.agents import checkpoint  # noqa: E402
from jaxsplit.agents.run import load_run, read_config  # noqa: E402
from jaxsplit.envs import DEFAULT_MODELS, EnvSpec  # noqa: E402
from jaxsplit.envs import policies as policies_mod  # noqa: E402
from jaxsplit.envs.evaluation import evaluate  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: clusters the generalist never saw: (label, flops FLOP/s, bandwidth bytes/s (inf local), latency s).
#: Each has a capacity outside the training ranges (5 to 100 GFLOP/s, 100 Mbit/s to 2 Gbit/s, 0.2 to 5 ms).
FIXED_CLUSTERS = (
    ("3 dev, one 200 GFLOP/s GPU", [20e9, 200e9, 30e9], [np.inf, 250e6, 62.5e6], [0.0, 0.5e-3, 2e-3]),
    ("5 dev, 50 Mbit/s Wi-Fi links", [10e9, 40e9, 40e9, 80e9, 15e9], [np.inf, 6.25e6, 6.25e6, 125e6, 6.25e6],
     [0.0, 8e-3, 8e-3, 1e-3, 8e-3]),
    ("6 dev, 2 GFLOP/s phones", [30e9, 2e9, 2e9, 60e9, 60e9, 2e9], [np.inf, 12.5e6, 12.5e6, 125e6, 125e6, 12.5e6],
     [0.0, 3e-3, 3e-3, 0.5e-3, 0.5e-3, 3e-3]),
)
#: specialist device count -> its registered environment (the main job's configuration on that N)
SPECIALIST_ENVS = {4: "alloc-v0", 8: "alloc-n8-v0", 2: "alloc-n2-v0"}
UNSEEN = ("resnet50", "yolov2_tiny@224", "examples/edge_cnn.py:make")


def complete(run_dir: Path) -> bool:
    """The run folder holds the final checkpoint of its configuration."""
    if not (run_dir / "config.json").is_file():
        return False
    _, config, _ = read_config(run_dir)
    return checkpoint.latest_step(run_dir) == config.num_updates


def train(run_dir: Path, env: str, seed: int, timesteps: int | None) -> None:
    """``jaxsplit train`` into ``run_dir`` unless it is complete (resumed when it has a checkpoint)."""
    if complete(run_dir):
        return
    cmd = ["jaxsplit", "train", "--env", env, "--seed", str(seed), "--out", str(run_dir), "--skip-eval",
           "--no-progress"]
    if timesteps is not None:
        cmd += ["--total-timesteps", str(timesteps)]
    if checkpoint.latest_step(run_dir) is not None:
        cmd.append("--resume")
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


@functools.lru_cache(maxsize=None)
def _policy(run_dir: Path, layout: Any) -> Callable:
    trainer, runner = load_run(run_dir)
    return trainer.policy(runner, layout=layout)


def generalist_policy(run_dir: Path, env: Any) -> Callable:
    """The deterministic policy of a generalist run for ``env`` (any device count); one object per run
    and layout, so that its compiled evaluation is reused across conditions."""
    return _policy(Path(run_dir), env.observation_space().layout)


def t_interval(values: np.ndarray) -> float:
    from scipy import stats

    n = len(values)
    return float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")


@functools.lru_cache(maxsize=None)
def _environment(models: tuple[str, ...], requests: int) -> Any:
    """alloc-any-v0 with this catalogue; one object per catalogue, so that every condition on it
    reuses the compiled evaluations (the conditions differ only in traced parameters)."""
    return EnvSpec(env="alloc-any-v0", requests=requests, models=",".join(models)).make()[0]


def condition(label: str, runs: list[Path], loads: list[float], episodes: int, requests: int, seed: int,
              baselines: list[str], models: tuple[str, ...], **settings: Any) -> list[dict[str, Any]]:
    """Every baseline and every generalist on one condition's episodes; one record per policy and load.
    ``settings``: the condition's environment parameters (devices_min, devices_max, churn, cluster, ...)."""
    env = _environment(tuple(models), requests)
    params = env.unwrapped.default_params(**settings)
    common = dict(loads=loads, episodes=episodes, seed=seed, warmup=0.1)
    rows = []
    t0 = time.perf_counter()
    per_seed = [evaluate(generalist_policy(r, env), env, params, name="generalist", **common) for r in runs]
    for i, load in enumerate(loads):
        values = np.array([rs[i]["mean_latency_s"] for rs in per_seed])
        rows.append(dict(condition=label, policy="generalist", load=load, mean_latency_s=float(values.mean()),
                         mean_latency_s_ci=t_interval(values), seeds=values.tolist()))
    for name in baselines:
        for r in evaluate(name, env.unwrapped, params, **common):
            rows.append(dict(condition=label, policy=name, load=r["load"], mean_latency_s=r["mean_latency_s"],
                             mean_latency_s_ci=r["mean_latency_s_ci"]))
    print(f"{label}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def specialist_rows(n: int, spec_run: Path, runs: list[Path], loads: list[float], episodes: int, requests: int,
                    seed: int) -> list[dict[str, Any]]:
    """The specialist of N devices and the generalists on the specialist's own episodes."""
    spec, _, _ = read_config(spec_run)
    s_env, s_params = spec.make(requests=requests)
    trainer, runner = load_run(spec_run)
    common = dict(loads=loads, episodes=episodes, seed=seed, warmup=0.1)
    rows = [dict(condition=f"specialist N={n}", policy="specialist", load=r["load"],
                 mean_latency_s=r["mean_latency_s"], mean_latency_s_ci=r["mean_latency_s_ci"])
            for r in evaluate(trainer.policy(runner), s_env, s_params, name="specialist", **common)]
    g_env, g_params = EnvSpec(env="alloc-any-v0", requests=requests).make(
        num_devices=n, devices_min=n, devices_max=n, churn=0.0, models=tuple(s_env.models))
    # the same episodes: a baseline gives the same latencies in both environments
    a = evaluate("whole_cluster", s_env.unwrapped, s_params, **common)
    b = evaluate("whole_cluster", g_env.unwrapped, g_params, **common)
    same = all(abs(x["mean_latency_s"] - y["mean_latency_s"]) <= 1e-6 * x["mean_latency_s"] for x, y in zip(a, b))
    if not same:
        raise SystemExit(f"specialist N={n}: the environments do not draw the same episodes")
    per_seed = [evaluate(generalist_policy(r, g_env), g_env, g_params, name="generalist", **common) for r in runs]
    for i, load in enumerate(loads):
        values = np.array([rs[i]["mean_latency_s"] for rs in per_seed])
        rows.append(dict(condition=f"specialist N={n}", policy="generalist", load=load,
                         mean_latency_s=float(values.mean()), mean_latency_s_ci=t_interval(values),
                         seeds=values.tolist()))
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per condition and load: the generalist, the best other policy, the change and the goal."""
    out = []
    for cond in dict.fromkeys(r["condition"] for r in rows):
        for load in sorted({r["load"] for r in rows if r["condition"] == cond}):
            at = [r for r in rows if r["condition"] == cond and r["load"] == load]
            gen = next(r for r in at if r["policy"] == "generalist")
            others = [r for r in at if r["policy"] != "generalist"]
            best = min(others, key=lambda r: r["mean_latency_s"])
            change = 100.0 * (gen["mean_latency_s"] / best["mean_latency_s"] - 1.0)
            if best["policy"] == "specialist" or cond.startswith("specialist"):
                goal, met = "within 2%", change <= 2.0
            elif load <= 0.6:
                goal, met = "within 3%", change <= 3.0
            else:
                goal, met = "7% below", change <= -7.0
            out.append(dict(condition=cond, load=load, generalist=gen["mean_latency_s"], best=best["policy"],
                            best_latency=best["mean_latency_s"], change_pct=change, goal=goal, met=bool(met)))
    return out


def markdown(rows: list[dict[str, Any]], summ: list[dict[str, Any]], loads: list[float]) -> str:
    fmt = lambda x: "nan" if not np.isfinite(x) else f"{x:.4g}"  # noqa: E731
    lines = ["| condition | load | generalist (s) | best other | its latency (s) | change | goal | met |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summ:
        lines.append(f"| {s['condition']} | {s['load']:g} | {fmt(s['generalist'])} | {s['best']} | "
                     f"{fmt(s['best_latency'])} | {s['change_pct']:+.1f}% | {s['goal']} | {'yes' if s['met'] else 'no'} |")
    lines += ["", "Mean latency (s) of every policy:", "",
              "| condition | policy | " + " | ".join(f"rho={x:g}" for x in loads) + " |",
              "|---|---|" + "---|" * len(loads)]
    for cond in dict.fromkeys(r["condition"] for r in rows):
        for pol in dict.fromkeys(r["policy"] for r in rows if r["condition"] == cond):
            cells = []
            for load in loads:
                r = next((r for r in rows if r["condition"] == cond and r["policy"] == pol and r["load"] == load), None)
                cells.append("" if r is None else f"{fmt(r['mean_latency_s'])} ± {fmt(r['mean_latency_s_ci'])}")
            lines.append(f"| {cond} | {pol} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    """The command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/generalist", help="folder of the run folders it trains")
    ap.add_argument("--seeds", type=int, default=5, help="generalists to train (seeds 0 .. S-1)")
    ap.add_argument("--runs", nargs="*", default=None, help="existing generalist run folders (no training)")
    ap.add_argument("--specialists", type=int, nargs="*", default=[4, 8], help="device counts of specialists to train")
    ap.add_argument("--specialist", action="append", default=[], help="N=RUN_DIR: an existing specialist run")
    ap.add_argument("--timesteps", type=int, default=None, help="environment steps per run (default: the main job's)")
    ap.add_argument("--loads", type=float, nargs="+", default=[0.3, 0.6, 0.9, 1.2])
    ap.add_argument("--devices", type=int, nargs="+", default=[2, 3, 5, 6, 8])
    ap.add_argument("--unseen", nargs="*", default=list(UNSEEN), help="model specs it never saw, one catalogue each")
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0, help="seed of the evaluation episodes")
    ap.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    return ap


def _runs(args: argparse.Namespace) -> tuple[list[Path], dict[int, Path]]:
    """The generalist run folders and the specialists' (device count -> run folder): those given, or
    those trained here (each unless complete); exits if a folder is not a generalist run."""
    out = Path(args.out)
    if args.runs is not None:
        runs = [Path(r) for r in args.runs]
        specialists = {int(k): Path(v) for k, v in (s.split("=", 1) for s in args.specialist)}
    else:
        runs = [out / f"generalist-s{s}" for s in range(args.seeds)]
        for s, r in enumerate(runs):
            train(r, "alloc-any-v0", s, args.timesteps)
        specialists = {}
        for n in args.specialists:
            specialists[n] = out / f"specialist-n{n}"
            train(specialists[n], SPECIALIST_ENVS[n], 0, args.timesteps)
        specialists.update({int(k): Path(v) for k, v in (s.split("=", 1) for s in args.specialist)})
    for r in runs:
        spec, _, _ = read_config(r)
        if spec is None or spec.env != "alloc-any-v0":
            raise SystemExit(f"{r}: not a generalist run (jaxsplit train --env alloc-any-v0)")
    return runs, specialists


def _evaluate_all(args: argparse.Namespace, runs: list[Path], specialists: dict[int, Path]) -> list[dict[str, Any]]:
    """Every condition in turn (random N, fixed clusters, churn, unseen models, then each specialist's
    episodes); the records of all, written to generalist.partial.json as they come."""
    common = dict(runs=runs, loads=args.loads, episodes=args.episodes, requests=args.requests, seed=args.seed,
                  baselines=list(policies_mod.registered()))
    main_models = tuple(DEFAULT_MODELS)
    rows: list[dict[str, Any]] = []
    for n in args.devices:
        rows += condition(f"random N={n}", devices_min=n, devices_max=n, churn=0.0, models=main_models, **common)
    for label, f, b, t in FIXED_CLUSTERS:
        rows += condition(f"fixed: {label}", cluster=(f, b, t), churn=0.0, models=main_models, **common)
        _partial(rows)
    rows += condition("churn 0.05 / rejoin 0.2, N=8", devices_min=8, devices_max=8, churn=0.05,
                      rejoin=0.2, models=main_models, **common)
    for model in args.unseen:
        if model.split("@")[0].endswith(".py:make") and not _has_torch():
            print(f"skipping {model}: torch is not installed", flush=True)
            continue
        rows += condition(f"unseen model {model}, N=4", devices_min=4, devices_max=4, churn=0.0,
                          models=(model,), **common)
        _partial(rows)
    for n, run in sorted(specialists.items()):
        while not complete(run):  # a specialist still training elsewhere
            print(f"waiting for {run} to finish training", flush=True)
            time.sleep(30)
        rows += specialist_rows(n, run, runs, args.loads, args.episodes, args.requests, args.seed)
        _partial(rows)
    return rows


def _body(args: argparse.Namespace, runs: list[Path], specialists: dict[int, Path], summ: list[dict[str, Any]],
          table: str) -> str:
    """The recorded section: the runs, the episodes, the goals met and the tables."""
    met = sum(s["met"] for s in summ)
    return "\n".join([
        "## The generalist: any cluster, any model", "",
        f"Command: `{command()}`", "",
        f"Generalists: {len(runs)} ({', '.join(str(r) for r in runs)}); specialists: "
        f"{', '.join(f'N={k}: {v}' for k, v in sorted(specialists.items())) or 'none'}. "
        f"Every policy on the same episodes ({args.episodes} per load, {args.requests} requests); "
        f"goals met: {met} of {len(summ)}.", "",
        table, "",
        f"Machine: {machine()}", "", f"Revision: {git_revision()}"])


def main() -> None:
    args = _parser().parse_args()
    runs, specialists = _runs(args)
    t0 = time.perf_counter()
    rows = _evaluate_all(args, runs, specialists)
    summ = summary(rows)
    table = markdown(rows, summ, args.loads)
    print(table)
    wall = time.perf_counter() - t0
    result = dict(rows=rows, summary=summ, runs=[str(r) for r in runs],
                  specialists={str(k): str(v) for k, v in specialists.items()}, command=command(),
                  machine=machine(), revision=git_revision(), wall_s=wall)
    (HERE / "generalist.json").write_text(json.dumps(result, indent=1) + "\n")
    (HERE / "generalist.partial.json").unlink(missing_ok=True)
    if args.no_record:
        return
    record("generalist", _body(args, runs, specialists, summ, table))


def _partial(rows: list[dict[str, Any]]) -> None:
    """The records so far, in case a long run stops before its end."""
    (HERE / "generalist.partial.json").write_text(json.dumps(rows, indent=1) + "\n")


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


if __name__ == "__main__":
    main()
