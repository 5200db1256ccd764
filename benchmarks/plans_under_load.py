"""The baselines under load with per-layer and with fused plans (writes RESULTS.md "Plans under load").

Every baseline runs on the plain environment (``alloc-v0``: 4 devices, the default catalogue,
clusters drawn per episode) once with ``planner="layer"`` and once with ``planner="fused"``, on the
same episodes. The offered load rho is relative to the per-layer E_ref-mean under both planners, so
one rho is one arrival rate in requests per second. For each load it reports the best baseline's
mean and p99 latency under each planner and their ratio.

    python benchmarks/plans_under_load.py [--episodes 8] [--no-record]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import record  # noqa: E402

#: every baseline that needs no options (``constant`` is best_constant at a share the user picks);
#: best_constant and best_clip search their share and (cap, floor) per load under each planner
BASELINES = ("random", "whole_cluster", "free_now", "fastest_k", "myopic", "best_constant", "best_clip")
LOADS = (0.3, 0.6, 0.9, 1.2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    from jaxsplit import envs

    start = time.perf_counter()
    rows = {}
    for planner in ("layer", "fused"):
        env, params = envs.make("alloc-v0", planner=planner)
        rows[planner] = envs.evaluate_baselines(BASELINES, env, params, loads=LOADS, episodes=args.episodes,
                                                requests=args.requests, seed=0)
        print(f"{planner}: {time.perf_counter() - start:.0f} s", flush=True)
    lines = ["| rho | best under layer: mean / p99 (s) | best under fused: mean / p99 (s) | fused / layer: mean, p99 |",
             "|---:|---|---|---|"]
    for load in LOADS:
        best = {}
        for planner, found in rows.items():
            at = [r for r in found if abs(r["load"] - load) < 1e-9]
            best[planner] = min(at, key=lambda r: r["mean_latency_s"])
        lay, fus = best["layer"], best["fused"]
        lines.append(f"| {load:g} | {lay['policy']}: {lay['mean_latency_s']:.4f} / {lay['p99_latency_s']:.4f} | "
                     f"{fus['policy']}: {fus['mean_latency_s']:.4f} / {fus['p99_latency_s']:.4f} | "
                     f"{fus['mean_latency_s'] / lay['mean_latency_s']:.3f}, "
                     f"{fus['p99_latency_s'] / lay['p99_latency_s']:.3f} |")
    per_policy = ["| policy | " + " | ".join(f"rho {l:g}: layer / fused mean (s)" for l in LOADS) + " |",
                  "|---|" + "---|" * len(LOADS)]
    for name in BASELINES:
        cells = []
        for load in LOADS:
            got = {p: next(r for r in rows[p] if r["policy"] == name and abs(r["load"] - load) < 1e-9)
                   for p in rows}
            cells.append(f"{got['layer']['mean_latency_s']:.4f} / {got['fused']['mean_latency_s']:.4f}")
        per_policy.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n\n" + "\n".join(per_policy)
    print(text)
    if not args.no_record:
        body = (f"## Plans under load (`benchmarks/plans_under_load.py`)\n\n"
                f"Command: `python benchmarks/plans_under_load.py --episodes {args.episodes} --requests "
                f"{args.requests}` ({time.perf_counter() - start:.0f} s). The plain environment (`alloc-v0`, 4 "
                f"devices, the default catalogue) with `planner=\"layer\"` and `planner=\"fused\"`, the same "
                f"{args.episodes} episodes of {args.requests} requests per load (10% warm-up left out); rho is "
                f"relative to the per-layer E_ref-mean under both, so the arrivals are the same. Baselines: "
                f"{', '.join(BASELINES)} (best_constant and best_clip search their tables per load under each "
                f"planner, on their own seeds; the trained PPO policy is not in this table).\n\n{text}")
        record("plans-under-load", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
