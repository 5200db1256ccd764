"""Compile time of the exact solver against the number of devices N (benchmarks/RESULTS.md).

``python benchmarks/exact_compile.py [N ...]`` lowers and compiles ``solve_batch("exact", ...)``'s
program (``jax.vmap(exact_split)`` under ``jit``) for a batch of 256 layer-instances with N devices
and prints the seconds per N, and the ratio to the smallest N measured in the same run.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsplit import solvers


def compile_seconds(num_devices: int, batch: int = 256) -> float:
    rng = np.random.default_rng(0)
    layers, cluster, share = _batch(rng, batch, num_devices)
    fn = jax.jit(jax.vmap(solvers.exact_split))
    t0 = time.perf_counter()
    fn.lower(layers, cluster, share).compile()
    return time.perf_counter() - t0


def _batch(rng, batch, num_devices):
    from jaxsplit.latency import Cluster, LayerArrays

    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    cols = {k: f32(np.full(batch, v)) for k, v in dict(in_height=56, out_height=56, stride=1, pad_top=1,
                                                         kernel_extent=3, in_row_bytes=56 * 64 * 4.0,
                                                         out_row_bytes=56 * 64 * 4.0, row_work=2 * 56 * 64 * 64 * 9.0).items()}
    shape = (batch, num_devices)
    cluster = Cluster(f32(rng.uniform(5e9, 1e11, shape)), f32(rng.uniform(1e7, 2.5e8, shape)),
                      f32(rng.uniform(2e-4, 5e-3, shape)))
    return LayerArrays(**cols), cluster, f32(rng.uniform(0.1, 1.0, shape))


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [4, 16, 64, 200, 1000]
    print(f"jax {jax.__version__}, backend {jax.default_backend()}")
    base = None
    for n in sizes:
        s = compile_seconds(n)
        base = base or s
        print(f"N={n:5d}  compile {s:7.2f} s  ({s / base:.2f}x N={sizes[0]})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
