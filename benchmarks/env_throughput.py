"""Allocation-environment throughput: steps per second against the number of parallel environments.

Random policy, default catalogue (vgg16, resnet18, mobilenet_v2, alexnet at 224x224), N = 4 and 8.
Every step solves every (unique) layer of its request with the closed-form split, plus one layer of
the next episode's reference latencies. Compile time is reported apart; the clock stops after
``block_until_ready``. On the CPU the closed form runs as the compiled kernel (jaxsplit.kernels)
when it is available. In the same run: the step's earlier versions (padded per-layer, flat array
code) interleaved with the present one, the closed form's own rate, the numpy twin (one
environment, its own random draws), the JAX step with the "equal" split rule (what the step costs
without the closed form), and the Gymnasium vector adapter. Results go to benchmarks/RESULTS.md.

    python benchmarks/env_throughput.py            # full sweep (about 3 minutes)
    python benchmarks/env_throughput.py --quick    # smaller sweep, no RESULTS.md update
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import command, git_revision, load_average, machine, record  # noqa: E402

from jaxsplit import bench, envs, kernels, solvers  # noqa: E402
from jaxsplit.latency import allocation_rates, device_times  # noqa: E402
from jaxsplit.envs.gym_adapter import GymnasiumAllocationVectorEnv  # noqa: E402
from jaxsplit.envs.twin import NumpyAllocationEnv  # noqa: E402


def use_padded_per_layer(env) -> None:
    """Make ``env`` compute E as its step did before the flat layout: every request solves all U
    padded unique layers of the catalogue's table (multiplicity 0 for the padding), one ``vmap``
    over the layers with the device axis last, inside the ``vmap`` over environments."""
    cat = env.catalogue

    def exec_time(cluster, share, model):
        layers = jax.tree.map(lambda a: a[model], cat.layers)
        rates = allocation_rates(cluster, share)
        one = lambda layer: jnp.max(device_times(layer, rates, solvers.closed_form_split(layer, cluster, share)))  # noqa: E731
        return jnp.sum(jax.vmap(one)(layers) * cat.count[model])

    env.engine._exec_time = exec_time


def kernel_solves_per_second(num_devices: int, batch: int = 1 << 16, repeats: int = 5,
                             arrays: bool = False) -> float:
    """Layer-solves per second of the batched closed form alone on the environment's own layers
    (the catalogue's unique layers, drawn at random) with random default clusters and shares: the
    compiled CPU kernel, or with ``arrays`` the array code (best of ``repeats``)."""
    env, params = envs.make("alloc-v0", num_devices=num_devices)
    rng = np.random.default_rng(0)
    idx = jnp.asarray(rng.integers(0, env.num_flat, batch))
    layer = jax.tree.map(lambda a: a[idx], env.catalogue.flat_layers)
    cluster = jax.vmap(env.sample_cluster, in_axes=(0, None))(jax.random.split(jax.random.key(0), batch), params)
    share = jnp.asarray(rng.uniform(0.05, 1.0, (batch, num_devices)), env.dtype)
    solve = solvers.solve_device_major_arrays if arrays else solvers.solve_device_major
    timing, _ = bench.time_compiled(solve, layer, cluster, share, repeats=repeats)
    return batch / timing.best_s


def jax_steps_per_second(num_devices: int, batch: int, split: str = "closed_form", repeats: int = 5,
                         impl: str = "default"):
    """(compile s, steps/s) of jit(scan(vmap(step))) with a random policy, the loop and timing of
    ``jaxsplit bench env`` (:func:`jaxsplit.bench.env_step_loop`, :func:`jaxsplit.bench.time_compiled`,
    best of ``repeats``). ``impl``: "default" (the compiled kernel on the CPU when available), "arrays"
    (E by the flat array code, ``env.engine._array_exec_times``) or "padded" (E as before the flat
    layout, :func:`use_padded_per_layer`)."""
    env, params = envs.make("alloc-v0", num_devices=num_devices, split=split)
    if impl == "padded":
        use_padded_per_layer(env)
    elif impl == "arrays":
        env.engine.exec_times = env.engine._array_exec_times  # the batching rule of exec_time calls this
    length = max(1, min(200, 20000 // batch))
    run, args = bench.env_step_loop(num_devices, batch, length, env_and_params=(env, params))
    timing, _ = bench.time_compiled(run, *args, repeats=repeats)
    return timing.compile_s, batch * length / timing.best_s


def twin_steps_per_second(num_devices: int, seconds: float = 3.0) -> float:
    twin = NumpyAllocationEnv(num_devices)
    rng = np.random.default_rng(0)
    twin.reset_random(rng)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        twin.step_random(rng.uniform(0, 1, num_devices), rng)
        steps += 1
    return steps / (time.perf_counter() - t0)


def gym_vector_steps_per_second(num_devices: int, num_envs: int, seconds: float = 2.0) -> float:
    venv = GymnasiumAllocationVectorEnv(num_envs, "alloc-v0", num_devices=num_devices)
    venv.reset(seed=0)
    rng = np.random.default_rng(0)
    venv.step(rng.uniform(0, 1, (num_envs, num_devices)).astype(np.float32))  # compile
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        venv.step(rng.uniform(0, 1, (num_envs, num_devices)).astype(np.float32))
        steps += num_envs
    return steps / (time.perf_counter() - t0)


DEVICES = (4, 8)
#: parallel environments of the interleaved comparison of the step's versions
CMP_ENVS = 1024


def step_sweep(batches: list[int]) -> tuple[list[tuple[int, int, float, float]], dict[int, float]]:
    """The present step for N in :data:`DEVICES` and every batch; (rows (N, envs, compile s, steps/s),
    N -> best steps/s)."""
    rows, best = [], {}
    for n in DEVICES:
        for b in batches:
            c, sps = jax_steps_per_second(n, b)
            rows.append((n, b, c, sps))
            best[n] = max(best.get(n, 0.0), sps)
            print(f"N={n} envs={b:>6}: compile {c:5.1f} s, {sps:12,.0f} steps/s", flush=True)
    return rows, best


def step_versions() -> dict[int, dict[str, float]]:
    """The step's three versions, interleaved, best of 3: padded per-layer (the first flat-less
    version), flat array code, and the compiled kernel (the default on the CPU); N -> version -> steps/s."""
    impls = ("padded", "arrays", "default")
    versions = {}
    for n in DEVICES:
        got = dict.fromkeys(impls, 0.0)
        for _ in range(3):
            for impl in impls:
                got[impl] = max(got[impl], jax_steps_per_second(n, CMP_ENVS, impl=impl, repeats=3)[1])
        versions[n] = got
        print(f"N={n} {CMP_ENVS} envs: padded per-layer {got['padded']:,.0f} steps/s, flat array code "
              f"{got['arrays']:,.0f}, compiled kernel {got['default']:,.0f}", flush=True)
    return versions


def closed_form_alone() -> tuple[dict[int, float], dict[int, float], object, np.ndarray, float]:
    """The closed form alone on the environment's layers; (N -> kernel layer-solves/s, N -> array-code
    layer-solves/s, the N = 4 environment, unique layers per model (U,), layer-solves a step)."""
    kernel = {n: kernel_solves_per_second(n) for n in DEVICES}
    array_solves = {n: kernel_solves_per_second(n, arrays=True) for n in DEVICES}
    env4 = envs.make("alloc-v0", num_devices=4)[0]
    sizes = np.asarray(env4.catalogue.size, np.float64)
    per_step = float(sizes.mean()) + env4.ref_chunk  # default mix is uniform
    for n in DEVICES:
        print(f"N={n}: closed form alone {kernel[n]:,.0f} layer-solves/s (array code {array_solves[n]:,.0f}) -> "
              f"at most {kernel[n] / per_step:,.0f} steps/s at {per_step:.1f} layer-solves a step", flush=True)
    return kernel, array_solves, env4, sizes, per_step


def peers(best: dict[int, float]) -> tuple[dict[int, float], dict[int, float], dict[int, float]]:
    """Steps/s of the numpy twin, the JAX step with the equal split (4096 envs) and the Gymnasium
    vector adapter (1024 envs), each N -> steps/s; ``best`` is the best JAX step rate per N."""
    twin = {n: twin_steps_per_second(n) for n in DEVICES}
    equal = {n: jax_steps_per_second(n, 4096, split="equal")[1] for n in DEVICES}
    gym = {n: gym_vector_steps_per_second(n, 1024) for n in DEVICES}
    for n in DEVICES:
        print(f"N={n}: numpy twin {twin[n]:,.0f} steps/s; best JAX {best[n]:,.0f} ({best[n] / twin[n]:,.0f}x); "
              f"equal split {equal[n]:,.0f}; gymnasium vector (1024 envs) {gym[n]:,.0f}")
    return twin, equal, gym


def sweep_lines(load_before: str, rows: list[tuple[int, int, float, float]], best: dict[int, float],
                twin: dict[int, float], equal: dict[int, float], gym: dict[int, float]) -> list[str]:
    """The section's heading, command, machine, the sweep's table and the table against the peers."""
    body = [
        "## Allocation environment throughput (`benchmarks/env_throughput.py`)",
        "",
        f"Command: `{command()}`  ",
        f"Machine: {machine()}  ",
        f"Devices: {bench.machine_line()}  ",
        f"Revision: {git_revision()}  ",
        f"Load average (1 min): {load_before} before, {load_average()} after (its own threads included)",
        "",
        "Random policy, default catalogue, every step solves all unique layers of its request with the",
        "closed-form split (and one layer of the next episode's reference). jit(scan(vmap(step))), compiled ahead",
        "of time (compile apart), best of 5 calls (`jaxsplit bench env` measures the same loop).",
        "",
        "| N | parallel envs | compile (s) | steps/s |",
        "|---|---:|---:|---:|",
    ]
    body += [f"| {n} | {b} | {c:.1f} | {sps:,.0f} |" for n, b, c, sps in rows]
    body += ["", "| N | numpy twin (1 env) | best JAX | JAX / twin | JAX, equal split (4096 envs) | "
             "Gymnasium vector adapter (1024 envs) |", "|---|---:|---:|---:|---:|---:|"]
    body += [f"| {n} | {twin[n]:,.0f} | {best[n]:,.0f} | {best[n] / twin[n]:,.0f}x | {equal[n]:,.0f} | {gym[n]:,.0f} |"
             for n in DEVICES]
    return body


def kernel_lines(versions: dict[int, dict[str, float]], alone: tuple, best: dict[int, float],
                 equal: dict[int, float]) -> list[str]:
    """The tables of the step's versions and of the closed form alone (``alone``: what
    :func:`closed_form_alone` returns)."""
    kernel, array_solves, env4, sizes, per_step = alone
    which = "the compiled CPU kernel" if kernels.available() else "the array code (kernel unavailable)"
    body = ["", f"E (every layer of the request under the closed-form split) is computed by {which}. Its three",
            f"versions, {CMP_ENVS} envs, same run, interleaved, best of 3: every request solving all U = "
            f"{sizes.max():.0f} padded unique layers of the catalogue's table (one vmap over the layers); the flat "
            "array code (the requests' real layers end to end, solved device-major in chunks; what runs on a GPU); "
            "the compiled kernel (jaxsplit.kernels: the same rows, one pass over the requests on XLA's CPU "
            "thread pool):", "",
            "| N | padded per-layer (steps/s) | flat array code | compiled kernel | kernel / array code |",
            "|---|---:|---:|---:|---:|"]
    body += [f"| {n} | {v['padded']:,.0f} | {v['arrays']:,.0f} | {v['default']:,.0f} | "
             f"{v['default'] / v['arrays']:.1f}x |" for n, v in versions.items()]
    body += ["", f"A step solves the unique layers of its request (sizes "
             f"{', '.join(f'{m} {int(k)}' for m, k in zip(env4.models, sizes))}: {sizes.mean():.1f} on average "
             f"for the uniform mix) and {env4.ref_chunk} layer of the next episode's reference, "
             f"{per_step:.1f} layer-solves a step. The closed form alone on the environment's layers, and the step "
             "rate it would allow if nothing else cost anything:", "",
             "| N | kernel (layer-solves/s) | array code (layer-solves/s) | bound from the kernel (steps/s) | "
             "best step (steps/s) | JAX, equal split (steps/s) |", "|---|---:|---:|---:|---:|---:|"]
    body += [f"| {n} | {kernel[n]:,.0f} | {array_solves[n]:,.0f} | {kernel[n] / per_step:,.0f} | {best[n]:,.0f} | "
             f"{equal[n]:,.0f} |" for n in DEVICES]
    body += ["", "On a machine shared with other jobs repeated runs differ by up to 2x; the version rows are",
             "interleaved so that all three see the same load."]
    return body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sweep; do not update RESULTS.md")
    args = parser.parse_args()
    batches = [1, 64, 1024, 4096] if args.quick else [1, 16, 256, 4096, 16384, 65536]
    load_before = load_average()
    rows, best = step_sweep(batches)
    versions = step_versions()
    alone = closed_form_alone()
    twin, equal, gym = peers(best)
    body = sweep_lines(load_before, rows, best, twin, equal, gym) + kernel_lines(versions, alone, best, equal)
    if not args.quick:
        record("env_throughput", "\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
