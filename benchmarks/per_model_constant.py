"""How much a static policy can gain: the best per-model constant share against the best uniform one.

Every model of the catalogue gets its own share, the same on every device, from ``--levels``; all
combinations (levels ** K, 256 for four models and four levels) run as one vmapped evaluation at each
load on search episodes, and the best combination per load is then evaluated on separate episodes
next to the best uniform share of the same grid. If the best combination is uniform, no static
per-model policy beats the best constant share, and a policy must look at the queue and the cluster.

    python benchmarks/per_model_constant.py           # records into RESULTS.md
    python benchmarks/per_model_constant.py --quick   # fewer episodes, prints only
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import command, git_revision, load_average, machine, record  # noqa: E402

from jaxsplit import envs  # noqa: E402
from jaxsplit.envs.evaluation import episode_metrics, run_episodes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", default="0.25,0.3333333,0.5,1.0", help="candidate shares")
    ap.add_argument("--loads", default="0.3,0.6,0.9,1.2")
    ap.add_argument("--search-episodes", type=int, default=8)
    ap.add_argument("--eval-episodes", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="2 + 4 episodes, no RESULTS.md update")
    args = ap.parse_args()
    levels = [float(x) for x in args.levels.split(",")]
    loads = [float(x) for x in args.loads.split(",")]
    search_eps, eval_eps = (2, 4) if args.quick else (args.search_episodes, args.eval_episodes)
    env, params = envs.make("alloc-v0")
    combos = np.array(list(itertools.product(levels, repeat=env.num_models)), np.float32)  # (G, K)
    uniform = np.flatnonzero(np.all(combos == combos[:, :1], axis=1))

    def act(key, obs, state, p, shares):
        return jnp.full((env.num_devices,), shares[state.model], jnp.float32)

    warm = int(0.1 * env.requests)
    t0 = time.perf_counter()
    search = episode_metrics(run_episodes(env, params, act, loads, search_eps, 777, aux=jnp.asarray(combos)),
                             warm)["mean_latency_s"].mean(-1)  # (G, loads)
    best = np.argmin(search, axis=0)
    best_uniform = uniform[np.argmin(search[uniform], axis=0)]
    chosen = np.concatenate([combos[best], combos[best_uniform]])  # (2 * loads, K)
    final = episode_metrics(run_episodes(env, params, act, loads, eval_eps, 1000, aux=jnp.asarray(chosen)),
                            warm)["mean_latency_s"]  # (2 * loads, loads, episodes)
    seconds = time.perf_counter() - t0
    n = len(loads)
    lines = ["| rho | best per-model shares (" + ", ".join(env.models) + ") | its latency (s) | "
             "best uniform share | its latency (s) | per-model / uniform |", "|---:|---|---:|---:|---:|---:|"]
    for i, load in enumerate(loads):
        pm, un = final[i, i], final[n + i, i]
        lines.append(f"| {load} | {', '.join(f'{c:.3g}' for c in combos[best[i]])} | {pm.mean():.4g} +- "
                     f"{1.96 * pm.std(ddof=1) / np.sqrt(len(pm)):.2g} | {combos[best_uniform[i], 0]:.3g} | "
                     f"{un.mean():.4g} +- {1.96 * un.std(ddof=1) / np.sqrt(len(un)):.2g} | {pm.mean() / un.mean():.3f} |")
    table = "\n".join(lines)
    print(table)
    print(f"({len(combos)} combinations x {n} loads x {search_eps} search episodes, then {eval_eps} episodes; "
          f"{seconds:.0f} s)")
    if args.quick:
        return
    record("per-model-constant", (
        f"### Best per-model constant share against the best uniform share\n\n`{command()}` (rev {git_revision()}) "
        f"on {machine()}; load average {load_average()}.\n\n{len(combos)} combinations (one share per model from "
        f"{{{', '.join(f'{c:.3g}' for c in levels)}}}, the same on every device) searched on {search_eps} episodes per "
        f"load, the winners evaluated on {eval_eps} other episodes (default randomised clusters, 256 requests, "
        f"10% warm-up left out); +- 95% interval over episodes. {seconds:.0f} s in all.\n\n{table}\n"))


if __name__ == "__main__":
    main()
