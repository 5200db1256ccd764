"""Throughput of jaxsplit on whatever JAX finds (CPU, GPU, TPU): the one definition of each headline figure.

``jaxsplit bench`` and the scripts under benchmarks/ both call these functions, so a figure means the
same thing wherever it is printed. Every measurement follows the same rules:

* the program is compiled ahead of time (``jax.jit(fn).lower(*args).compile()``) and that time is
  reported apart from the run time (with the persistent compilation cache on, a second run loads it);
* every clock stops after ``jax.block_until_ready`` of the outputs;
* the run is repeated ``repeats`` times: the best time gives the rate, and the spread
  ((slowest - best) / best) says how noisy the machine was.

Sections:

* :func:`split_rows`: layer-solves per second of the batched jitted split solvers per solver, N and
  batch, with each solver's gap to the exact optimum (request-free: latency of one layer) over random
  instances (:mod:`jaxsplit.sampling`);
* :func:`plan_rows`: best plans per second (MODEL.md section 7: fused segments and channel splits,
  the closed form inside each segment) of zoo models on clusters drawn like the environment's, with
  the gap to the exact best plan and the speed-up over the per-layer closed form;
* :func:`env_rows`: steps per second of the allocation environment, ``jit(scan(vmap(step)))`` under a
  random policy, against the number of parallel environments;
* :func:`train_rows`: environment steps per second of PPO training (the ``jaxsplit train`` defaults of
  :class:`~jaxsplit.agents.ppo.PPOConfig` and :class:`~jaxsplit.envs.EnvSpec`, only the run length
  set), one agent (``jit(train)``) and populations (:func:`~jaxsplit.agents.population.train_population`);
* :func:`sb3_numpy_peer`: the peer a user without jaxsplit has, Stable-Baselines3 PPO on a Gymnasium
  environment stepping the numpy twin (:class:`~jaxsplit.envs.twin.NumpyAllocationEnv`), same PPO
  settings (needs the ``bench`` extra).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

SECTIONS = ("split", "plan", "env", "train")


# ------------------------------------------------------------------------------------------ timing
@dataclass(frozen=True)
class Timing:
    """Compile time and the run times of one measurement; seconds."""

    compile_s: float
    times_s: tuple[float, ...]

    @property
    def best_s(self) -> float:
        return min(self.times_s)

    @property
    def spread(self) -> float:
        """(slowest - best) / best over the repeats; 0 for one repeat."""
        return max(self.times_s) / self.best_s - 1.0

    def fields(self, work: float, unit: str) -> dict[str, float]:
        """``{compile_s, best_s, spread, <unit>: work / best_s}``."""
        return dict(compile_s=self.compile_s, best_s=self.best_s, spread=self.spread, **{unit: work / self.best_s})


def time_compiled(fn: Callable, *args: Any, repeats: int = 3) -> tuple[Timing, Any]:
    """Compile ``jax.jit(fn)`` for ``args`` ahead of time and run it ``repeats`` times.

    Returns (timing, the last call's outputs). The compile clock stops when the executable exists; each
    run clock stops after ``block_until_ready`` of the outputs."""
    import jax

    if repeats < 1:
        raise ValueError(f"field 'repeats': must be positive, got {repeats}")
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return Timing(compile_s, tuple(times)), out


# ------------------------------------------------------------------------------------------ machine
def machine_info() -> dict[str, Any]:
    """The machine a figure was measured on: JAX's devices, versions, CPU model, cores and load."""
    import jax
    import jaxlib

    devices = jax.devices()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:  # not on every platform
        load = None
    from jaxsplit import kernels

    return dict(platform=devices[0].platform, device_kind=devices[0].device_kind, device_count=len(devices),
                jax=jax.__version__, jaxlib=jaxlib.__version__, cpu=cpu, cpu_cores=os.cpu_count(),
                load_1m=load, python=platform.python_version(), cpu_kernel=kernels.available())


def machine_line(info: dict[str, Any] | None = None) -> str:
    """:func:`machine_info` on one line."""
    m = info or machine_info()
    return (f"{m['device_count']} x {m['device_kind']} ({m['platform']}), jax {m['jax']} / jaxlib {m['jaxlib']}, "
            f"{m['cpu']}, {m['cpu_cores']} cores, load {m['load_1m']}, Python {m['python']}")


# ------------------------------------------------------------------------------------------ validation
def check_positive(field: str, values: Iterable[int]) -> tuple[int, ...]:
    """``values`` as a tuple of ints; ValueError naming ``field`` and the first value below 1."""
    out = tuple(values)
    if not out:
        raise ValueError(f"field '{field}': empty list")
    for v in out:
        if int(v) != v or v < 1:
            raise ValueError(f"field '{field}': must be positive integers, got {v!r}")
    return tuple(int(v) for v in out)


def bench_solvers() -> tuple[str, ...]:
    """The solvers :func:`split_rows` measures: every jitted solver (the LP runs on the host)."""
    from jaxsplit import solvers

    return tuple(n for n in solvers.SOLVERS if n not in solvers.HOST_SOLVERS)


def check_solvers(names: Iterable[str]) -> tuple[str, ...]:
    """ValueError naming an unknown (or host-only) solver."""
    from jaxsplit import solvers

    out, known = tuple(names), bench_solvers()
    if not out:
        raise ValueError("field 'solvers': empty list")
    for name in out:
        if name in solvers.HOST_SOLVERS:
            raise ValueError(f"field 'solvers': {name!r} runs on the host one instance at a time, not as a batched "
                             f"jitted solver; bench solvers: {', '.join(known)}")
        if name not in known:
            raise ValueError(f"field 'solvers': unknown solver {name!r}; known: {', '.join(known)}")
    return out


class _Steps:
    """Advance a progress callback (or nothing) by one step per measured row."""

    def __init__(self, progress: Callable[[str], None] | None):
        self.progress = progress

    def __call__(self, label: str) -> None:
        if self.progress is not None:
            self.progress(label)


# ------------------------------------------------------------------------------------------ split
def split_rows(solver_names: Sequence[str] = ("closed_form", "exact"), devices: Sequence[int] = (4, 8),
               batches: Sequence[int] = (1 << 14,), repeats: int = 3, seed: int = 0,
               progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Layer-solves per second of ``solvers.batched_solver(name)`` per (solver, N, batch), and each
    solver's latency gap to the exact optimum at that N.

    Instances: :func:`jaxsplit.sampling.random_arrays` (float32; one draw per (N, batch)). Gap: on the
    smallest batch's instances, the layer latency (:func:`jaxsplit.latency.layer_latency`) of the
    solver's rows over that of the exact solver's rows, minus 1: median, p99 and max (0 for exact).

    Returns one dict per row: solver, devices, batch, compile_s, best_s, spread, solves_per_s,
    gap_median, gap_p99, gap_max (the gap fields are the same on every batch of one solver and N).
    """
    import jax

    from jaxsplit import sampling, solvers
    from jaxsplit.latency import layer_latency

    names, devices, batches = check_solvers(solver_names), check_positive("devices", devices), check_positive(
        "batches", batches)
    step = _Steps(progress)
    latency = jax.jit(jax.vmap(layer_latency))
    rows = []
    for n in devices:
        gap_batch = min(batches)
        outputs: dict[str, Any] = {}
        found = []
        for b in batches:
            data = jax.device_put(sampling.random_arrays(np.random.default_rng(seed + 1000 * n + b), b, n))
            if b == gap_batch:
                gap_data = data
            for name in names:
                timing, out = time_compiled(solvers.batched_solver(name), *data, repeats=repeats)
                if b == gap_batch:
                    outputs[name] = out
                found.append(dict(solver=name, devices=n, batch=b, **timing.fields(b, "solves_per_s")))
                step(f"split {name} N={n} B={b}")
        if "exact" not in outputs:
            outputs["exact"] = solvers.batched_solver("exact")(*gap_data)
        best = np.asarray(latency(*gap_data, outputs["exact"]), np.float64)
        for row in found:
            gap = np.asarray(latency(*gap_data, outputs[row["solver"]]), np.float64) / best - 1.0
            row.update(gap_median=float(np.median(gap)), gap_p99=float(np.quantile(gap, 0.99)),
                       gap_max=float(gap.max()))
        rows += found
    return rows


# ------------------------------------------------------------------------------------------ plans
def env_like_clusters(rng: np.random.Generator, batch: int, num_devices: int) -> tuple[np.ndarray, ...]:
    """Clusters and shares drawn like the environment's (MODEL.md section 6 defaults): F log-uniform
    in 5-100 GFLOP/s, B log-uniform in 100 Mbit/s-2 Gbit/s (device 0 local), tau uniform in 0.2-5 ms
    (device 0: 0), shares uniform in [0.2, 1]. Returns (flops, bandwidth, latency, share), (batch, N)."""
    def loguniform(lo, hi):
        return np.exp(rng.uniform(np.log(lo), np.log(hi), (batch, num_devices)))

    flops = loguniform(5e9, 1e11)
    bandwidth = loguniform(100e6 / 8, 2e9 / 8)
    bandwidth[:, 0] = np.inf
    tau = rng.uniform(2e-4, 5e-3, (batch, num_devices))
    tau[:, 0] = 0.0
    share = rng.uniform(0.2, 1.0, (batch, num_devices))
    return flops, bandwidth, tau, share


def plan_rows(models: Sequence[str] = ("vgg16",), devices: Sequence[int] = (8,), batches: Sequence[int] = (4096,),
              gap_instances: int = 64, repeats: int = 3, seed: int = 0,
              progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Best plans per second of ``jit(vmap(Planner.best_plan))`` per (model, N, batch), with the gap
    of the closed-form best plan to the exact best plan (the exact rule in every segment) and its
    speed-up over the per-layer closed form, on ``gap_instances`` instances of the first batch.

    Returns one dict per row: model, devices, batch, compile_s, best_s, spread, plans_per_s,
    gap_median, gap_p99, gap_max, speedup_median (per-layer closed-form latency / best plan's).
    """
    import jax
    import jax.numpy as jnp

    from jaxsplit import planner, zoo
    from jaxsplit.latency import Cluster

    devices, batches = check_positive("devices", devices), check_positive("batches", batches)
    step = _Steps(progress)
    rows = []
    for name in models:
        p = planner.Planner(zoo.get(name))
        best = jax.jit(jax.vmap(lambda c, a: p.best_plan(c, a).latency))
        exact = jax.jit(jax.vmap(lambda c, a: p.best_plan(c, a, "exact").latency))
        layer = jax.jit(jax.vmap(lambda c, a: p.layer_plan(c, a).latency))
        for n in devices:
            gap = None
            for b in batches:
                f, bw, tau, share = env_like_clusters(np.random.default_rng(seed + 1000 * n + b), b, n)
                args = (Cluster(*(jnp.asarray(x, jnp.float32) for x in (f, bw, tau))), jnp.asarray(share, jnp.float32))
                timing, out = time_compiled(best, *args, repeats=repeats)
                if gap is None:
                    few = jax.tree.map(lambda x: x[:gap_instances], args)
                    got = np.asarray(out[:gap_instances], np.float64)
                    gap = got / np.asarray(exact(*few), np.float64) - 1.0
                    speedup = np.asarray(layer(*few), np.float64) / got
                rows.append(dict(model=name, devices=n, batch=b, **timing.fields(b, "plans_per_s"),
                                 gap_median=float(np.median(gap)), gap_p99=float(np.quantile(gap, 0.99)),
                                 gap_max=float(gap.max()), speedup_median=float(np.median(speedup))))
                step(f"plan {name} N={n} B={b}")
    return rows


# ------------------------------------------------------------------------------------------ environment
def env_step_loop(num_devices: int, num_envs: int, length: int, split: str = "closed_form",
                  env_and_params: tuple[Any, Any] | None = None, planner: str = "layer") -> tuple[Callable, tuple]:
    """``(run, (state, key))``: ``run(state, key)`` is ``length`` steps of ``num_envs`` environments under a
    uniformly random share action, ``scan(vmap(step))``; it returns (state, summed reward (length,))."""
    import jax

    from jaxsplit import envs

    env, params = env_and_params or envs.make("alloc-v0", num_devices=num_devices, split=split, planner=planner)
    keys = jax.random.split(jax.random.key(0), num_envs)
    _, state = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(keys, params)

    def run(state, key):
        def body(state, k):
            ka, ks = jax.random.split(k)
            action = jax.random.uniform(ka, (num_envs, num_devices))
            _, state, reward, _, _, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(ks, num_envs), state, action, params)
            return state, reward.sum()

        return jax.lax.scan(body, state, jax.random.split(key, length))

    return run, (state, jax.random.key(1))


def env_rows(devices: Sequence[int] = (4,), num_envs: Sequence[int] = (64, 1024), repeats: int = 3,
             steps_per_call: int = 20_000, split: str = "closed_form", planners: Sequence[str] = ("layer",),
             progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Environment steps per second (all environments together) per (planner, N, number of
    environments); ``planners``: the environment's ``planner`` settings to measure, side by side.

    Each call runs ``max(1, min(200, steps_per_call // num_envs))`` sequential steps of every
    environment. Returns one dict per row: devices, envs, length, compile_s, best_s, spread, steps_per_s.
    """
    devices, num_envs = check_positive("devices", devices), check_positive("envs", num_envs)
    check_positive("steps-per-call", (steps_per_call,))
    step = _Steps(progress)
    rows = []
    for planner in planners:
        for n in devices:
            for b in num_envs:
                length = max(1, min(200, steps_per_call // b))
                run, args = env_step_loop(n, b, length, split, planner=planner)
                timing, _ = time_compiled(run, *args, repeats=repeats)
                rows.append(dict(planner=planner, devices=n, envs=b, length=length, split=split,
                                 **timing.fields(b * length, "steps_per_s")))
                step(f"env {planner} N={n} envs={b}")
    return rows


# ------------------------------------------------------------------------------------------ training
def train_config(updates: int, **overrides: Any):
    """The ``jaxsplit train`` defaults (PPOConfig) with ``updates`` updates (and ``overrides``)."""
    from jaxsplit.agents.ppo import PPOConfig

    check_positive("updates", (updates,))
    defaults = PPOConfig()
    batch = overrides.get("num_envs", defaults.num_envs) * overrides.get("num_steps", defaults.num_steps)
    return dataclasses.replace(defaults, **{**overrides, "total_timesteps": updates * batch})


def train_single(config, spec=None, seed: int = 0, repeats: int = 1) -> tuple[dict[str, Any], Any]:
    """One agent, ``jit(make_train(config, *spec.make()))``; (row, (runner, metrics, trainer)) of the last run.

    The row: agents, updates, steps, compile_s, best_s, spread, steps_per_s (environment steps)."""
    import jax

    from jaxsplit.agents.ppo import make_train
    from jaxsplit.envs import EnvSpec

    spec = spec or EnvSpec()
    train = make_train(config, *spec.make())
    timing, (runner, metrics) = time_compiled(train, jax.random.PRNGKey(seed), repeats=repeats)
    if not all(np.isfinite(np.asarray(v)).all() for v in metrics.values()):
        raise RuntimeError("non-finite training metrics")
    steps = config.num_updates * config.batch_size
    row = dict(agents=1, updates=config.num_updates, steps=steps, **timing.fields(steps, "steps_per_s"))
    return row, (runner, metrics, train.trainer)


def train_population_row(config, agents: int, spec=None, repeats: int = 1, init: str = "map") -> dict[str, Any]:
    """``agents`` agents in one :func:`~jaxsplit.agents.population.train_population` call.

    ``train_population`` compiles inside its first call, so compile_s is that call minus the best of the
    ``repeats`` later calls (each with other seeds); it is asserted that the program compiled once."""
    import jax

    from jaxsplit.agents.population import population_grid, train_population
    from jaxsplit.agents.ppo import make_train
    from jaxsplit.envs import EnvSpec

    check_positive("agents", (agents,))
    spec = spec or EnvSpec()
    train = make_train(config, *spec.make())
    base = train.trainer.default_hparams()
    sharded = jax.device_count() > 1 and agents % jax.device_count() == 0
    times = []
    for r in range(repeats + 1):
        keys, hp, _ = population_grid(base, list(range(r * agents, (r + 1) * agents)))
        t0 = time.perf_counter()
        _, metrics = jax.block_until_ready(train_population(train, keys, hp, sharded=sharded, init=init))
        times.append(time.perf_counter() - t0)
    (fn,) = train._population_fns.values()
    if fn._cache_size() != 1:
        raise RuntimeError("the population program was compiled more than once")
    if not np.isfinite(np.asarray(metrics["value_loss"])).all():
        raise RuntimeError("non-finite training metrics")
    steps = agents * config.num_updates * config.batch_size
    timing = Timing(max(times[0] - min(times[1:]), 0.0), tuple(times[1:]))
    return dict(agents=agents, updates=config.num_updates, steps=steps, **timing.fields(steps, "steps_per_s"))


def train_rows(updates: int = 3, agents: Sequence[int] = (1, 8, 64), repeats: int = 1, pop_updates: int | None = None,
               progress: Callable[[str], None] | None = None, **overrides: Any) -> list[dict[str, Any]]:
    """Training env-steps/s for each population size in ``agents`` (1: one ``jit(train)``)."""
    agents = check_positive("agents", agents)
    step = _Steps(progress)
    rows = []
    for a in agents:
        if a == 1:
            row = train_single(train_config(updates, **overrides), repeats=repeats)[0]
        else:
            row = train_population_row(train_config(pop_updates or updates, **overrides), a, repeats=repeats)
        rows.append(row)
        step(f"train agents={a}")
    return rows


# ------------------------------------------------------------------------------------------ peer
def twin_gym_env(spec=None, seed: int = 0):
    """A Gymnasium environment stepping the numpy twin, one request per step, as a numpy user writes it:
    clusters, loads and requests drawn as in the JAX environment; episodes of ``requests`` steps end
    truncated. Observation and action spaces are the unwrapped JAX environment's (shares in [0, 1]^N)."""
    import gymnasium

    from jaxsplit.envs import EnvSpec
    from jaxsplit.envs.gym_adapter import _spaces
    from jaxsplit.envs.twin import NumpyAllocationEnv

    spec = spec or EnvSpec()
    env, _ = spec.base()
    obs_space, act_space = _spaces(env)
    kw = {k: v for k, v in spec.overrides().items() if k in ("reward_scale", "observation", "requests", "split")}

    class TwinEnv(gymnasium.Env):
        observation_space, action_space = obs_space, act_space

        def __init__(self):
            self.twin = NumpyAllocationEnv(env.num_devices, **kw)
            self.rng = np.random.default_rng(seed)

        def reset(self, *, seed=None, options=None):
            if seed is not None:
                self.rng = np.random.default_rng(seed)
            return self.twin.reset_random(self.rng).astype(np.float32), {}

        def step(self, action):
            t = self.twin
            obs, reward, info = t.step(action, self.rng.exponential() / t.rate, self.rng.choice(len(t.models), p=t.mix))
            return obs.astype(np.float32), float(reward), False, t.count >= t.requests, {"latency": info["latency"]}

    return TwinEnv


def sb3_numpy_peer(config, timesteps: int, spec=None, seed: int = 0, threads: int = 1,
                   num_envs: int | None = None) -> dict[str, Any]:
    """Stable-Baselines3 PPO on ``num_envs`` (default ``config.num_envs``) numpy-twin environments
    (``DummyVecEnv``, ``VecNormalize``), the other PPO settings of ``config`` (minibatches of
    ``num_envs * num_steps / num_minibatches``); env-steps/s of the whole ``learn()``. The twin steps
    one environment at a time in Python, so the rate hardly depends on ``num_envs``: a smaller number
    keeps a bounded run to whole updates. Needs the ``bench`` extra.

    Returns steps, run_s, steps_per_s, envs, threads, versions, and the trained model and normaliser."""
    import stable_baselines3
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    torch.set_num_threads(threads)
    cls = twin_gym_env(spec, seed)
    num_envs = num_envs or config.num_envs
    check_positive("envs", (num_envs,))
    venv = DummyVecEnv([lambda i=i: _seeded(cls, seed + i) for i in range(num_envs)])
    venv = VecNormalize(venv, norm_obs=config.normalize_obs, norm_reward=config.normalize_reward, clip_obs=10.0,
                        clip_reward=np.inf, gamma=config.gamma)
    lr = (lambda remaining: config.lr * remaining) if config.anneal_lr else config.lr
    model = PPO("MlpPolicy", venv, learning_rate=lr, n_steps=config.num_steps,
                batch_size=max(1, num_envs * config.num_steps // config.num_minibatches),
                n_epochs=config.update_epochs, gamma=config.gamma, gae_lambda=config.gae_lambda,
                clip_range=config.clip_eps, clip_range_vf=config.clip_eps, ent_coef=config.ent_coef,
                vf_coef=config.vf_coef, max_grad_norm=config.max_grad_norm, normalize_advantage=True,
                policy_kwargs=dict(net_arch=dict(pi=list(config.hidden), vf=list(config.hidden)),
                                   activation_fn=torch.nn.Tanh), device="cpu", seed=seed, verbose=0)
    t0 = time.perf_counter()
    model.learn(total_timesteps=timesteps)
    wall = time.perf_counter() - t0
    steps = int(model.num_timesteps)
    return dict(steps=steps, run_s=wall, steps_per_s=steps / wall, envs=num_envs, threads=torch.get_num_threads(),
                sb3=stable_baselines3.__version__, torch=torch.__version__, model=model, vecnorm=venv)


def _seeded(cls, seed: int):
    env = cls()
    env.rng = np.random.default_rng(seed)
    return env


# ------------------------------------------------------------------------------------------ all
def quick_settings() -> dict[str, dict[str, Any]]:
    """``--quick``: small settings, a smoke run under a minute on a 2-core CPU (one training agent;
    ``--agents 1,8`` adds a population, whose program takes about half a minute more to compile)."""
    return dict(split=dict(solver_names=("closed_form", "exact"), devices=(4, 8), batches=(1 << 12,), repeats=3),
                plan=dict(models=("vgg16",), devices=(8,), batches=(1024,), gap_instances=16, repeats=2),
                env=dict(devices=(4,), num_envs=(1024,), repeats=3, steps_per_call=8192),
                # one agent only: a population's program compiles for half a minute on 2 cores (--agents)
                train=dict(updates=1, agents=(1,), repeats=1, num_envs=64, num_steps=32, num_minibatches=4))


def full_settings() -> dict[str, dict[str, Any]]:
    """The default (full) run: the figures recorded in benchmarks/RESULTS.md."""
    return dict(split=dict(solver_names=("closed_form", "exact", "rebalance"), devices=(4, 8, 16),
                           batches=(1 << 14, 1 << 17, 1 << 20), repeats=5),
                plan=dict(models=("vgg16", "resnet18", "yolov2_tiny"), devices=(4, 8), batches=(4096,),
                          gap_instances=128, repeats=3),
                env=dict(devices=(4, 8), num_envs=(1, 256, 4096, 65536), repeats=5, steps_per_call=65536),
                train=dict(updates=8, agents=(1, 8, 64), repeats=2, pop_updates=3))


def row_count(section: str, settings: dict[str, Any]) -> int:
    """Rows a section's settings measure (the progress bar's total)."""
    if section == "split":
        return len(settings["solver_names"]) * len(settings["devices"]) * len(settings["batches"])
    if section == "env":
        return len(settings.get("planners", ("layer",))) * len(settings["devices"]) * len(settings["num_envs"])
    if section == "plan":
        return len(settings["models"]) * len(settings["devices"]) * len(settings["batches"])
    return len(settings["agents"])


RUNNERS: dict[str, Callable[..., list[dict[str, Any]]]] = {"split": split_rows, "plan": plan_rows, "env": env_rows,
                                                          "train": train_rows}
