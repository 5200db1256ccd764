"""Split-solver throughput and the closed form's optimality gap; figures into benchmarks/RESULTS.md.

Measures, in one run on one machine:
* layer-solves per second of the batched jitted closed form for N in {2, 4, 8, 16} and batches up to
  2^20 (compile time reported apart, ``block_until_ready`` before every clock stop, best of repeats):
  the compiled CPU kernel (jaxsplit.kernels) and the same rule as array code, with a check that both
  give the previous implementation's rows;
* the jitted exact solver and the jitted EdgeLD-style rebalancing;
* the peers a user would otherwise run one instance at a time: a numpy closed form
  (:func:`jaxsplit.reference.closed_form`) and the scipy/HiGHS LP (:func:`jaxsplit.solvers.lp_split`);
* the closed form's gap to the exact optimum over random layers (median, p99, max).

Usage: ``python benchmarks/split_throughput.py [--quick]``
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import command, load_average, machine, previous_closed_form, record  # noqa: E402

from jaxsplit import bench, kernels, reference, sampling, solvers  # noqa: E402
from jaxsplit.latency import layer_latency  # noqa: E402


def timed(fn, *args, repeats: int = 3) -> tuple[float, float]:
    """(compile seconds, best steady-state seconds): :func:`jaxsplit.bench.time_compiled`, the
    definition ``jaxsplit bench split`` uses."""
    timing, _ = bench.time_compiled(fn, *args, repeats=repeats)
    return timing.compile_s, timing.best_s


def per_instance_rate(fn, count: int) -> float:
    t0 = time.perf_counter()
    for i in range(count):
        fn(i)
    return count / (time.perf_counter() - t0)


def closed_form_section(kernel, arrays, which: str, devices: list[int], sizes: list[int],
                        rng: np.random.Generator) -> tuple[list[str], dict[tuple[int, int], float]]:
    """The batched closed form (kernel, with the array code alongside) for every N and batch size;
    (markdown lines, (N, batch) -> the kernel's layer-solves/s). Draws its instances from ``rng``."""
    print(f"closed form, batched jit ({which}; array code alongside):")
    table = ["| N | batch | compile (s) | steady (s) | layer-solves/s | array code (layer-solves/s) |",
             "|---|---|---|---|---|---|"]
    closed_rate = {}
    for n in devices:
        for b in sizes:
            data = jax.device_put(sampling.random_arrays(rng, b, n))
            first, best = timed(kernel, *data)
            array_best = timed(arrays, *data)[1]
            rate = b / best
            closed_rate[(n, b)] = rate
            table.append(f"| {n} | {b} | {first:.2f} | {best:.4f} | {rate:,.0f} | {b / array_best:,.0f} |")
            print(f"  N={n:2d} B={b:8d} compile {first:6.2f}s  steady {best:8.4f}s  {rate:14,.0f}/s  "
                  f"(array code {b / array_best:14,.0f}/s)", flush=True)
    return [f"### Closed form (batched, jitted; {which})", "", *table, ""], closed_rate


def versions_section(kernel, arrays, devices: list[int]) -> list[str]:
    """The previous implementation (device axis last, vmapped), the present array code (device-major)
    and the compiled kernel, interleaved, on the same 2^17 instances per N, with a check that all three
    give the same rows; markdown lines."""
    previous = jax.jit(functools.partial(solvers._chunked_vmap, jax.vmap(previous_closed_form().closed_form_split)))
    table = ["| N | batch | previous (layer-solves/s) | array code, device-major | compiled kernel | "
             "kernel / array code | same rows (all three) |", "|---|---|---|---|---|---|---|"]
    cmp_b = 2**17
    for n in devices:
        data = jax.device_put(sampling.random_arrays(np.random.default_rng(50 + n), cmp_b, n))
        want = np.asarray(previous(*data))
        same = bool((want == np.asarray(arrays(*data))).all() and (want == np.asarray(kernel(*data))).all())
        old_t, arr_t, ker_t = np.inf, np.inf, np.inf
        for _ in range(3):
            old_t = min(old_t, timed(previous, *data, repeats=2)[1])
            arr_t = min(arr_t, timed(arrays, *data, repeats=2)[1])
            ker_t = min(ker_t, timed(kernel, *data, repeats=2)[1])
        table.append(f"| {n} | {cmp_b} | {cmp_b / old_t:,.0f} | {cmp_b / arr_t:,.0f} | {cmp_b / ker_t:,.0f} | "
                     f"{arr_t / ker_t:.1f}x | {same} |")
        print(f"  N={n:2d} previous {cmp_b / old_t:14,.0f}/s  array {cmp_b / arr_t:14,.0f}/s  "
              f"kernel {cmp_b / ker_t:14,.0f}/s  same rows: {same}", flush=True)
    return ["### Previous implementation, array code and compiled kernel (same run, interleaved, best of 3)", "",
            *table, ""]


def exact_section(quick: bool, rng: np.random.Generator) -> tuple[list[str], dict[tuple[str, int], float]]:
    """The jitted exact solver and EdgeLD-style rebalancing at N = 4 and 8; (markdown lines,
    (solver, N) -> layer-solves/s). Draws its instances from ``rng``."""
    exact_b = 2**14 if quick else 2**16
    table = ["| solver | N | batch | compile (s) | steady (s) | layer-solves/s |", "|---|---|---|---|---|---|"]
    jit_rates = {}
    for name in ("exact", "rebalance"):
        for n in (4, 8):
            data = jax.device_put(sampling.random_arrays(rng, exact_b, n))
            first, best = timed(solvers.batched_solver(name), *data, repeats=2)
            jit_rates[(name, n)] = exact_b / best
            table.append(f"| {name} | {n} | {exact_b} | {first:.2f} | {best:.4f} | {exact_b / best:,.0f} |")
            print(f"  {name} N={n} {exact_b / best:,.0f}/s (compile {first:.2f}s)", flush=True)
    return ["### Exact and EdgeLD-style rebalancing (batched, jitted)", "", *table, ""], jit_rates


def peers_section(quick: bool, rng: np.random.Generator, ours: float,
                  jit_rates: dict[tuple[str, int], float]) -> list[str]:
    """The peers one instance at a time at N = 8 (numpy closed form, scipy LP) against ``ours``, the
    batched closed form's layer-solves/s; markdown lines. Draws the numpy peer's instances from ``rng``."""
    n, count = 8, 300 if quick else 2000
    layers = [sampling.random_layer(rng) for _ in range(count)]
    clusters = [sampling.random_cluster(rng, n) for _ in range(count)]
    np_rate = per_instance_rate(
        lambda i: reference.closed_form(layers[i], list(zip(*clusters[i][:3])), clusters[i][3]), count)
    la, cl, share, _ = sampling.random_batch(np.random.default_rng(1), 200, n)
    lp_count = 100 if quick else 200
    lp_rate = per_instance_rate(
        lambda i: solvers.lp_split(jax.tree.map(lambda x: x[i], la), jax.tree.map(lambda x: x[i], cl), share[i]),
        lp_count)
    print(f"  numpy closed form per instance: {np_rate:,.0f}/s; scipy LP: {lp_rate:,.1f}/s", flush=True)
    return [
        "### Peers at N = 8 (one instance at a time, same run)", "",
        "| solver | layer-solves/s | batched closed form / peer |", "|---|---|---|",
        f"| numpy closed form (per instance) | {np_rate:,.0f} | {ours / np_rate:,.0f}x |",
        f"| scipy HiGHS LP relaxation (per instance) | {lp_rate:,.1f} | {ours / lp_rate:,.0f}x |",
        f"| jitted exact (batched) | {jit_rates[('exact', 8)]:,.0f} | {ours / jit_rates[('exact', 8)]:,.1f}x |",
        f"| jitted EdgeLD rebalancing (batched) | {jit_rates[('rebalance', 8)]:,.0f} | "
        f"{ours / jit_rates[('rebalance', 8)]:,.1f}x |", "",
    ]


def gap_section(quick: bool) -> list[str]:
    """The closed form's (plain and refined) latency gap to the exact optimum over random layers at
    N = 4 and 8: median, p99, max; markdown lines."""
    gap_b = 2000 if quick else 10_000
    table = ["| N | solver | median gap | p99 gap | max gap |", "|---|---|---|---|---|"]
    lat = jax.jit(jax.vmap(layer_latency))
    for n in (4, 8):
        la, cl, share, _ = sampling.random_batch(np.random.default_rng(100 + n), gap_b, n)
        exact = np.asarray(lat(la, cl, share, solvers.solve_batch("exact", la, cl, jnp.asarray(share))), np.float64)
        plain_rows = jax.jit(jax.vmap(solvers.closed_form_plain))(la, cl, share)
        for name, rows in (("closed form (plain, MODEL.md rounding)", plain_rows),
                           ("closed form (refined)", solvers.solve_batch("closed_form", la, cl, jnp.asarray(share)))):
            gap = np.asarray(lat(la, cl, share, rows), np.float64) / exact - 1
            table.append(f"| {n} | {name} | {np.median(gap):.2%} | {np.quantile(gap, 0.99):.2%} | {gap.max():.2%} |")
            print(f"  gap N={n} {name}: median {np.median(gap):.3%} p99 {np.quantile(gap, .99):.3%} max {gap.max():.3%}")
    return [f"### Closed form's gap to the exact optimum ({gap_b} random layers)", "", *table, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batches (a smoke run, not recorded)")
    args = parser.parse_args()
    load_before = load_average()
    rng = np.random.default_rng(0)  # one stream for the sections below, drawn in this order
    sizes = [2**10, 2**14, 2**17] if args.quick else [2**10, 2**14, 2**17, 2**20]
    devices = [2, 4, 8, 16]

    kernel = solvers.batched_solver("closed_form")  # the compiled kernel on the CPU when available
    arrays = jax.jit(solvers.solve_device_major_arrays)  # the same rule as array code (any platform)
    which = "compiled CPU kernel" if kernels.available() else "array code (kernel unavailable)"
    lines, closed_rate = closed_form_section(kernel, arrays, which, devices, sizes, rng)
    lines += versions_section(kernel, arrays, devices)
    exact_lines, jit_rates = exact_section(args.quick, rng)
    lines += exact_lines
    lines += peers_section(args.quick, rng, closed_rate[(8, sizes[-1])], jit_rates)
    lines += gap_section(args.quick)

    body = "\n".join([
        "## Split-solver throughput (benchmarks/split_throughput.py)", "",
        f"Command: `{command()}`  ", f"Machine: {machine()}  ", f"Devices: {bench.machine_line()}  ",
        f"Load average (1 min): {load_before} before, {load_average()} after (its own threads included)", "",
        "Random instances: conv / pool / linear layers with kernel 1-7, stride 1-3, padding 0-3, dilation 1-3, "
        "heights up to 224, channels up to 512; device 0 local, others 5-100 GFLOP/s, 100 Mbit/s - 2 Gbit/s, "
        "0.2-5 ms; shares uniform with 15% zeros.", "", *lines,
    ])
    if args.quick:
        print("(quick run: not recorded)")
    else:
        record("split_throughput", body)
        print("recorded in benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
