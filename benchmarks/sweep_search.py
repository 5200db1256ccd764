"""Sweeps: throughput against population size, and random search vs TPE vs PBT at equal steps.

    python benchmarks/sweep_search.py throughput [--populations 1 2 4 8] [--updates 3]
    python benchmarks/sweep_search.py search [--trials 16] [--population 8] [--timesteps 1000000]

``throughput`` trains populations of the main job's configuration (environment and PPO settings) and
times ``--updates`` updates after a compiled warm-up chunk (``block_until_ready`` before the clock
stops): env-steps/s of the whole population, and trials per hour at the main job's length
(24 M steps), i.e. env-steps/s / 24e6 * 3600 (training only; evaluation adds a few seconds per
population).

``search`` runs three sweeps of ``--trials`` trials each with the same space, budget and evaluation
(``jaxsplit sweep``'s objective: mean latency over loads 0.3, 0.6, 0.9, 1.2, 8 episodes of 256
requests): random search, TPE, and PBT; and, as the reference, the main job's defaults trained for
the same steps with ``--population`` seeds. Each sweep has ``trials * timesteps`` environment steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import command, git_revision, load_average, machine, record  # noqa: E402

from jaxsplit.agents.population import PopulationRunner, population_members  # noqa: E402
from jaxsplit.agents.ppo import PPOConfig, make_train  # noqa: E402
from jaxsplit.agents.space import parse_dimension  # noqa: E402
from jaxsplit.agents.sweep import Sweep, SweepSettings  # noqa: E402
from jaxsplit.envs import EnvSpec  # noqa: E402

OUT = Path(__file__).resolve().parent / "sweep_search.json"
SPACE = ("lr=1e-4:3e-3:log", "ent_coef=0:0.05", "gamma=0.9:0.99")


def throughput(populations: list[int], updates: int) -> list[dict]:
    env, params = EnvSpec().make()
    config = PPOConfig()
    rows = []
    for size in populations:
        runner = PopulationRunner(make_train(config, env, params))
        keys, hp = population_members(runner.trainer.default_hparams(), [{"seed": s} for s in range(size)])
        keys, hp = runner.place((keys, hp))
        t0 = time.perf_counter()
        state = runner.init(keys, hp)
        state, _ = runner.run(state, hp, updates)
        jax.block_until_ready(state)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        state, _ = runner.run(state, hp, updates)
        jax.block_until_ready(state)
        seconds = time.perf_counter() - t0
        rate = size * updates * config.batch_size / seconds
        rows.append({"population": size, "env_steps_per_s": rate, "trials_per_hour": rate / config.total_timesteps * 3600,
                     "first_call_s": compile_s, "timed_s": seconds})
        print(f"P={size}: {rate:,.0f} env-steps/s, {rows[-1]['trials_per_hour']:.2f} trials/h "
              f"(first call {compile_s:.0f} s)", flush=True)
    return rows


def search(trials: int, population: int, timesteps: int, out: Path) -> dict:
    spec, config = EnvSpec(), PPOConfig(total_timesteps=timesteps)
    dims = [parse_dimension(t) for t in SPACE]
    base = dict(trials=trials, population=population, eval_loads=(0.3, 0.6, 0.9, 1.2), eval_episodes=8, eval_requests=256,
                eval_seed=1000)  # the recorded figures' protocol (the sweep's defaults before envs.Protocol)
    results = {}
    for name, extra in (("random", dict(sampler="random")), ("tpe", dict(sampler="tpe")),
                        ("pbt", dict(sampler="random", schedule="pbt", chunk=max(1, config.num_updates // 6)))):
        t0 = time.perf_counter()
        sweep = Sweep(out / name, spec, config, dims, SweepSettings(**base, **extra), study=name)
        study = sweep.run()
        done = sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
        results[name] = {"best": done[0].value, "best_params": done[0].params,
                         "best_final_params": done[0].user_attrs.get("final_params"),
                         "top3_mean": float(np.mean([t.value for t in done[:3]])), "trials": len(done),
                         "env_steps": int(sum(t.user_attrs["env_steps"] for t in done)),
                         "per_load": done[0].user_attrs["per_load"], "wall_s": time.perf_counter() - t0}
        print(f"{name}: best {results[name]['best']:.4g} s {done[0].params}", flush=True)
    # the defaults, `population` seeds at the same length: one trial per seed of a one-point grid
    sweep = Sweep(out / "defaults", spec, config, [parse_dimension(f"lr={config.lr}")],
                  SweepSettings(**{**base, "trials": 1, "seeds": population}, sampler="grid"), study="defaults")
    t = sweep.run().best_trial
    results["defaults"] = {"objective": t.value, "per_load": t.user_attrs["per_load"], "seeds": population}
    print(f"defaults: {t.value:.4g} s", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("throughput", "search"))
    ap.add_argument("--populations", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--timesteps", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=Path("runs/sweep_search"))
    args = ap.parse_args()
    # the sweeps compile one program; the persistent cache serves it to the later ones
    jax.config.update("jax_compilation_cache_dir", str(args.out / "jax_cache"))
    saved = json.loads(OUT.read_text()) if OUT.exists() else {}
    head = f"Revision {git_revision()}; {machine()}; load average {load_average()} at the start.\n\nCommand: `{command()}`\n"
    if args.mode == "throughput":
        rows = throughput(args.populations, args.updates)
        saved["throughput"] = rows
        body = ("### Sweep throughput against population size (main job's configuration)\n\n" + head +
                "\n| population | env-steps/s | trials/h at 24 M steps | first call (s) |\n|---:|---:|---:|---:|\n" +
                "".join(f"| {r['population']} | {r['env_steps_per_s']:,.0f} | {r['trials_per_hour']:.2f} | "
                        f"{r['first_call_s']:.0f} |\n" for r in rows))
        record("sweep-throughput", body)
    else:
        res = search(args.trials, args.population, args.timesteps, args.out)
        saved["search"] = res
        d = res["defaults"]
        lines = ["### Random search, TPE and PBT at equal environment steps", "", head,
                 f"Each sweep: {args.trials} trials of {args.timesteps:,} steps (the main job's settings otherwise), "
                 f"population {args.population}, space {', '.join(SPACE)}. Objective: mean latency (s) over loads "
                 f"0.3-1.2, lower is better.", "",
                 "| method | trials | env steps | best objective | mean of top 3 | best parameters | wall (s) |",
                 "|---|---:|---:|---:|---:|---|---:|"]
        for name in ("random", "tpe", "pbt"):
            r = res[name]
            params = r["best_final_params"] or r["best_params"]
            lines.append(f"| {name} | {r['trials']} | {r['env_steps']:,} | {r['best']:.4g} | {r['top3_mean']:.4g} | "
                         + ", ".join(f"{k}={v:.3g}" for k, v in params.items()) + f" | {r['wall_s']:.0f} |")
        lines.append(f"| defaults ({d['seeds']} seeds) | | | {d['objective']:.4g} | | the main job's | |")
        record("sweep-search", "\n".join(lines) + "\n")
    OUT.write_text(json.dumps(saved, indent=1) + "\n")


if __name__ == "__main__":
    main()
