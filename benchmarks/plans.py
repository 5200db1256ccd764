"""Plans of MODEL.md section 7 on every zoo model: the best plan against the per-layer closed form and
the peers' plans, on clusters drawn like the environment's (writes RESULTS.md "Plans").

For each zoo model and each of ``--clusters`` clusters (N uniform in 2..8, drawn by
:func:`jaxsplit.bench.env_like_clusters`; the devices past N are absent: share 0, so one program
serves every N), it computes in one vmapped call per plan:

* ``fused``: the best plan (fused segments and channel splits, the closed form in each segment);
* ``layer``: the per-layer plan of section 3 with the closed form (the paper's method);
* ``aofl``: AOFL-style, fusion points by dynamic programming, rows proportional to compute;
* ``deepthings``: DeepThings-style, a fused prefix with equal rows, the rest per layer;
* ``alone``: the whole request on the coordinator (device 0, at its share) alone.

and reports, per model and over the zoo, the speed-up of the best plan over each (its median, 10th
and 90th percentiles) and how far the best plan ever falls behind a peer (max of fused / peer - 1).

    python benchmarks/plans.py [--clusters 200] [--seed 0] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import record  # noqa: E402

PLANS = ("fused", "layer", "aofl", "deepthings")


def draw(rng: np.random.Generator, count: int, most: int = 8) -> tuple[np.ndarray, ...]:
    """``count`` clusters of 2..``most`` devices padded to ``most`` with absent devices."""
    from jaxsplit.bench import env_like_clusters

    flops, bandwidth, tau, share = env_like_clusters(rng, count, most)
    present = np.arange(most)[None, :] < rng.integers(2, most + 1, count)[:, None]
    return flops, bandwidth, tau, np.where(present, share, 0.0)


def model_latencies(name: str, clusters: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    """Latency (s) of every plan of zoo model ``name`` on every cluster, float64 (B,) each."""
    import jax
    import jax.numpy as jnp

    from jaxsplit import planner, zoo
    from jaxsplit.latency import Cluster

    p = planner.Planner(zoo.get(name))
    f, bw, tau, share = clusters
    cluster = Cluster(*(jnp.asarray(x, jnp.float32) for x in (f, bw, tau)))
    a = jnp.asarray(share, jnp.float32)
    out = {plan: np.asarray(jax.jit(jax.vmap(lambda c, s, plan=plan: p.plan(plan, c, s).latency))(cluster, a),
                            np.float64) for plan in PLANS}
    alone = jnp.where(jnp.arange(a.shape[1]) == 0, a, 0.0)  # device 0 with its own share, the others absent
    out["alone"] = np.asarray(jax.jit(jax.vmap(lambda c, s: p.layer_plan(c, s).latency))(cluster, alone), np.float64)
    return out


def quantiles(x: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(x)), "p10": float(np.quantile(x, 0.1)), "p90": float(np.quantile(x, 0.9)),
            "min": float(x.min()), "max": float(x.max())}


def summary(lat: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Speed-ups of the best plan over each other plan, and its worst lag behind each peer."""
    fused = lat["fused"]
    out = {other: quantiles(lat[other] / fused) for other in ("layer", "aofl", "deepthings", "alone")}
    out["layer_vs_alone"] = quantiles(lat["alone"] / lat["layer"])
    for peer in ("aofl", "deepthings"):
        out[peer]["behind_max"] = float(np.max(fused / lat[peer] - 1.0))
    return out


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| model | x per-layer: median (p10, p90) | x AOFL-style: median (worst) | x DeepThings-style: median (worst) "
             "| x coordinator alone: fused / per-layer |",
             "|---|---|---|---|---|"]
    for name, s in results.items():
        lay, aofl, dt = s["layer"], s["aofl"], s["deepthings"]
        lines.append(f"| {name} | {lay['median']:.2f} ({lay['p10']:.2f}, {lay['p90']:.2f}) | {aofl['median']:.3f} "
                     f"({aofl['min']:.3f}) | {dt['median']:.2f} ({dt['min']:.3f}) | {s['alone']['median']:.2f} / "
                     f"{s['layer_vs_alone']['median']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clusters", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default=None, help="comma-separated zoo models (default: the whole zoo)")
    ap.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md as it is")
    args = ap.parse_args(argv)
    from jaxsplit import zoo

    names = args.models.split(",") if args.models else zoo.names()
    clusters = draw(np.random.default_rng(args.seed), args.clusters)
    results, pooled = {}, {k: [] for k in (*PLANS, "alone")}
    start = time.perf_counter()
    for name in names:
        lat = model_latencies(name, clusters)
        results[name] = summary(lat)
        for k, v in lat.items():
            pooled[k].append(v)
        print(f"{name}: x per-layer median {results[name]['layer']['median']:.3f}", flush=True)
    results["zoo (all instances)"] = summary({k: np.concatenate(v) for k, v in pooled.items()})
    text = table(results)
    print(text)
    print(json.dumps(results, indent=1))
    if not args.no_record:
        worst = {peer: max(s[peer]["behind_max"] for s in results.values()) for peer in ("aofl", "deepthings")}
        body = (f"## Plans: fused segments and channel splits (`benchmarks/plans.py`)\n\n"
                f"Command: `python benchmarks/plans.py --clusters {args.clusters} --seed {args.seed}` "
                f"({time.perf_counter() - start:.0f} s). Every zoo model at its default input size x {args.clusters} "
                f"clusters drawn like the environment's (N uniform in 2..8; F 5-100 GFLOP/s and B 100 Mbit/s-2 "
                f"Gbit/s log-uniform, tau 0.2-5 ms, shares uniform in [0.2, 1]). Speed-up = the other plan's "
                f"request latency / the best plan's (closed form in each segment, MODEL.md section 7); "
                f"worst = the smallest speed-up over any instance (below 1: the best plan was behind). The last "
                f"column compares the coordinator alone with the best plan and with the per-layer plan.\n\n"
                f"{text}\n\nWorst lag of the best plan behind a peer on any instance: AOFL-style "
                f"{worst['aofl']:+.3%}, DeepThings-style {worst['deepthings']:+.3%} (a negative figure: never behind).")
        record("plans", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
