"""Compile time of the exact solver against the number of devices N (benchmarks/RESULTS.md).

``python benchmarks/exact_compile.py`` lowers and compiles the exact solver's batched program
(``jax.vmap(exact_split)`` under ``jit``, what ``solve_batch("exact", ...)`` runs) for 256
layer-instances with N devices, and records the seconds per N in RESULTS.md. The same run also
compiles the greedy pass fully unrolled over the devices (one copy of its body per device, the
program of a Python loop over the devices) at the smaller N, as the peer the ratio is taken against.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import command, load_average, machine, record  # noqa: E402

from jaxsplit import solvers  # noqa: E402
from jaxsplit.latency import Cluster, LayerArrays  # noqa: E402

SIZES = (4, 16, 64, 200, 1000)
UNROLLED_SIZES = (4, 16, 64)
BATCH = 256


def _batch(num_devices: int) -> tuple[LayerArrays, Cluster, jax.Array]:
    """A 3x3 convolution (64 channels, 56 rows) on random clusters; fields (B,) and (B, N)."""
    rng = np.random.default_rng(0)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    fields = dict(in_height=56, out_height=56, stride=1, pad_top=1, kernel_extent=3, in_row_bytes=56 * 64 * 4.0,
                  out_row_bytes=56 * 64 * 4.0, row_work=2 * 56 * 64 * 64 * 9.0)
    shape = (BATCH, num_devices)
    cluster = Cluster(f32(rng.uniform(5e9, 1e11, shape)), f32(rng.uniform(1e7, 2.5e8, shape)),
                      f32(rng.uniform(2e-4, 5e-3, shape)))
    return LayerArrays(**{k: f32(np.full(BATCH, v)) for k, v in fields.items()}), cluster, f32(rng.uniform(0.1, 1, shape))


def compile_seconds(num_devices: int) -> float:
    args = _batch(num_devices)
    fn = jax.jit(jax.vmap(solvers.exact_split))  # a fresh jit: nothing cached in this process
    t0 = time.perf_counter()
    fn.lower(*args).compile()
    return time.perf_counter() - t0


def main() -> None:
    before = load_average()
    loop = {n: compile_seconds(n) for n in SIZES}
    saved = solvers.GREEDY_UNROLL
    solvers.GREEDY_UNROLL = 10**9
    try:
        unrolled = {n: compile_seconds(n) for n in UNROLLED_SIZES}
    finally:
        solvers.GREEDY_UNROLL = saved
    lines = ["## Exact solver: compile time against N (benchmarks/exact_compile.py)", "",
             f"Command: `{command()}`  ", f"Machine: {machine()}  ",
             f"Load average (1 min): {before} before, {load_average()} after", "",
             f"One `jit(vmap(exact_split))` program for {BATCH} layer-instances (a 3x3 convolution, 56 rows) "
             f"with N devices, lowered and compiled from scratch. The greedy pass is a `lax.scan` over the "
             f"devices, unrolled up to {saved} devices; \"unrolled\" compiles one copy of its body per device "
             f"(a Python loop over the devices) in the same run.", "",
             "| N | compile (s) | unrolled (s) | unrolled / scan |", "|---|---|---|---|"]
    for n in SIZES:
        u = unrolled.get(n)
        lines.append(f"| {n} | {loop[n]:.1f} | {'' if u is None else f'{u:.1f}'} | "
                     f"{'' if u is None else f'{u / loop[n]:.2f}'} |")
    lines += ["", f"The scan's compile time from N = {SIZES[0]} to N = {SIZES[-1]}: "
              f"{loop[SIZES[-1]] / loop[SIZES[0]]:.2f}x; the unrolled program's from N = {UNROLLED_SIZES[0]} to "
              f"N = {UNROLLED_SIZES[-1]}: {unrolled[UNROLLED_SIZES[-1]] / unrolled[UNROLLED_SIZES[0]]:.2f}x. "
              f"Instances take at most 1024 devices (docs/MODEL.md, section 8). At N <= {saved} both columns "
              f"compile the same program, so their difference there is the run's noise (a shared machine; "
              f"see its load average)."]
    text = "\n".join(lines)
    print(text)
    record("exact-compile", text)


if __name__ == "__main__":
    main()
