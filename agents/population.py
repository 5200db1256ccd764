"""Populations of agents (seeds x hyperparameters) trained in one call, sharded over devices and hosts.

Every hyperparameter in :class:`~jaxsplit.agents.ppo.HyperParams` is traced, so a population is just a
leading axis P on the key and on every hyperparameter: ``jax.jit(jax.vmap(train))``. The population
axis is laid out over a one-dimensional mesh named ``"pop"`` with ``NamedSharding``, and the program
is a ``shard_map`` over that axis, so each device trains its P / D agents and no device talks to
another during training.

Initialisation: by default (``init="map"``) the agents are initialised one after another inside the
call (``jax.lax.map`` over the agents of a device) and only the training updates are vmapped. The
network's orthogonal initialisation runs LAPACK QR (``geqrf``, ``orgqr``); vmapped, these become
batched LAPACK calls, which jaxlib 0.10's CPU kernels split over XLA's intra-op thread pool and then
wait for from a thread of that same pool. When the program runs as many of them at once as the pool
has threads (two on a 2-core CPU), every worker waits for work queued behind itself and the call
never returns. Unbatched calls are never split. The result is the same either way; ``init="vmap"``
vmaps the whole ``train`` (safe where the pool has more threads than the network has layers).

Several hosts: start the same script on every host with ``jax.distributed.initialize(coordinator,
num_processes, process_id)`` called first (on SLURM or TPU pods ``jax.distributed.initialize()`` with no
arguments finds them itself). ``jax.devices()`` then lists the devices of all hosts, the mesh spans
them, each host feeds the shards of its own devices (``jax.make_array_from_callback``), and
:func:`gather` collects the results on every host.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .ppo import TRACED, HyperParams

#: name of the mesh axis that carries the population.
POP_AXIS = "pop"

#: how :func:`train_population` initialises the agents (see the module docstring).
INIT_MODES = ("map", "vmap")


def population_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process) with axis ``"pop"``."""
    return Mesh(np.asarray(list(devices) if devices is not None else jax.devices()), (POP_AXIS,))


def population_grid(base: HyperParams, seeds: int | Sequence[int], **grid: Sequence[float]
                    ) -> tuple[np.ndarray, HyperParams, list[dict[str, float]]]:
    """Keys and hyperparameters of the product of ``seeds`` and the value lists in ``grid``.

    ``grid`` names traced PPO settings (:data:`~jaxsplit.agents.ppo.TRACED`) or scalar fields of the
    environment's params (``base.env``, a dataclass pytree such as the allocation environment's
    ``EnvParams``). Returns ``(keys (P, 2) uint32, hparams with leaves of leading axis P, rows)`` where
    ``rows[p]`` names agent p's seed and grid values. Everything not in ``grid`` keeps ``base``'s value.
    """
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise ValueError("seeds must not be empty")
    env_fields = {f.name for f in dataclasses.fields(base.env)} if dataclasses.is_dataclass(base.env) else set()
    for name, values in grid.items():
        if name not in TRACED and name not in env_fields:
            raise ValueError(f"field {name!r}: not a traced setting; choose from {', '.join(TRACED)} or the "
                             f"environment's parameters {', '.join(sorted(env_fields))}")
        if name in env_fields and np.ndim(getattr(base.env, name)) != 0:
            raise ValueError(f"field {name!r}: only scalar environment parameters can be searched")
        if len(values) == 0:
            raise ValueError(f"field {name!r}: the grid has no values")
    names = list(grid)
    rows = [dict(zip(names, combo), seed=s) for combo in itertools.product(*grid.values()) for s in seeds]
    keys, hparams = population_members(base, rows)
    return keys, hparams, rows


def population_members(base: HyperParams, rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, HyperParams]:
    """Keys and hyperparameters of an explicit list of agents.

    ``rows[p]`` holds agent p's ``seed`` and the values of any traced PPO settings or scalar
    environment parameters that differ from ``base`` (names as in :func:`population_grid`, checked
    there). Returns ``(keys (P, 2) uint32, hparams with leaves of leading axis P)``.
    """
    if not rows:
        raise ValueError("a population needs at least one agent")
    keys = np.stack([np.asarray(jax.random.PRNGKey(int(r["seed"]))) for r in rows]).astype(np.uint32)
    size = len(rows)
    env_fields = {f.name for f in dataclasses.fields(base.env)} if dataclasses.is_dataclass(base.env) else set()

    def column(name: str, default: Any) -> np.ndarray:
        default = np.asarray(default)
        if all(name not in r for r in rows):
            return np.broadcast_to(default, (size,) + default.shape).copy()
        return np.asarray([r.get(name, default) for r in rows], default.dtype)

    ppo = {name: column(name, np.float32(getattr(base, name))) for name in TRACED}
    env = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (size,) + np.shape(x)).copy(), base.env)
    searched = sorted({name for r in rows for name in r if name in env_fields})
    if searched:
        env = env.replace(**{name: column(name, getattr(base.env, name)) for name in searched})
    return keys, HyperParams(**ppo, env=env)


def _to_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array sharded by ``sharding`` whose local shards come from the host array ``x``."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def shard_population(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf (leading axis P, divisible by the mesh size) on ``mesh`` along ``"pop"``."""
    sharding = NamedSharding(mesh, PartitionSpec(POP_AXIS))
    return jax.tree.map(lambda x: _to_global(x, sharding), tree)


def population_fn(train: Callable, init: Literal["map", "vmap"] = "map") -> Callable:
    """``fn(keys (P, 2), hparams (P,)) -> (runner_states, metrics)`` for one device's agents, unjitted.

    ``init="map"`` initialises the agents one at a time (``jax.lax.map`` of ``train.trainer.init``)
    and vmaps ``trainer.run`` over them; ``init="vmap"`` is ``jax.vmap(train)``. Both give the same
    result; see the module docstring for why "map" is the default. A ``train`` without a
    ``trainer`` attribute (not from :func:`~jaxsplit.agents.ppo.make_train`) is always vmapped whole.
    """
    if init not in INIT_MODES:
        raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
    trainer = getattr(train, "trainer", None)
    if init == "vmap" or trainer is None:
        return jax.vmap(train)
    num_updates = trainer.config.num_updates

    def fn(keys: jax.Array, hparams: HyperParams):
        runners = jax.lax.map(lambda args: trainer.init(*args), (keys, hparams))
        return jax.vmap(lambda runner, hp: trainer.run(runner, hp, num_updates))(runners, hparams)

    return fn


def train_population(train: Callable, keys: np.ndarray, hparams: HyperParams, mesh: Mesh | None = None,
                     sharded: bool = True, init: Literal["map", "vmap"] = "map") -> tuple[Any, dict[str, jax.Array]]:
    """Train P agents in one jitted call, the population axis sharded over ``mesh``.

    Args:
      train: the function from :func:`~jaxsplit.agents.ppo.make_train`.
      keys: (P, 2) uint32 raw keys (host array, the same on every process).
      hparams: HyperParams with fields of shape (P,) (host arrays, the same on every process).
      mesh: the device mesh (default: :func:`population_mesh` over all devices).
      sharded: False runs unsharded on the default device (for comparison).
      init: "map" (default) initialises the agents one after another inside the call and vmaps the
        training; "vmap" vmaps the whole ``train``. Same result; "vmap" can deadlock XLA's CPU
        runtime on hosts with few cores (see the module docstring).
    Returns:
      ``(runner_states, metrics)`` with leading axis P; ``metrics[name]`` is (P, num_updates).
      The compiled program is cached on ``train`` per (mode, init), so later calls do not recompile.
    """
    keys = np.asarray(keys, np.uint32)
    size = keys.shape[0]
    if keys.ndim != 2 or keys.shape[1] != 2:
        raise ValueError(f"keys must have shape (P, 2), got {keys.shape}")
    for path, value in jax.tree_util.tree_leaves_with_path(hparams):
        if np.shape(value)[:1] != (size,):
            raise ValueError(f"hparams{jax.tree_util.keystr(path)} must have leading axis {size}, "
                             f"got shape {np.shape(value)}")
    if init not in INIT_MODES:
        raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
    cache = train.__dict__.setdefault("_population_fns", {})
    if not sharded:
        fn = cache.get(("plain", init))
        if fn is None:
            fn = cache[("plain", init)] = jax.jit(population_fn(train, init))
        return fn(jnp.asarray(keys), jax.tree.map(jnp.asarray, hparams))
    mesh = mesh or population_mesh()
    if size % mesh.size:
        raise ValueError(f"population size {size} must be a multiple of the {mesh.size} devices of the mesh")
    fn = cache.get(("sharded", mesh, init))
    if fn is None:
        spec = PartitionSpec(POP_AXIS)
        fn = cache[("sharded", mesh, init)] = jax.jit(
            jax.shard_map(population_fn(train, init), mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False))
    return fn(*shard_population((keys, hparams), mesh))


def gather(tree: Any) -> Any:
    """Host numpy copies of (possibly multi-host) global arrays, identical on every process."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


class PopulationRunner:
    """A population trained in chunks: ``init`` once, then ``run`` any number of updates at a time.

    The same program as :func:`train_population` (agents initialised one after another, updates
    vmapped, the population axis sharded over ``mesh``), split at update boundaries so that a caller
    can report progress, checkpoint, or change the population between chunks (population-based
    training). Chunked training equals :func:`train_population` of the whole run, since
    ``Trainer.run`` of n then m updates equals ``Trainer.run`` of n + m. Each chunk length compiles
    once.
    """

    def __init__(self, train: Callable, mesh: Mesh | None = None, sharded: bool = True):
        self.trainer = train.trainer
        self.sharded = sharded
        self.mesh = (mesh or population_mesh()) if sharded else None
        self._runs: dict[int, Callable] = {}
        trainer = self.trainer
        self._init = self._compile(lambda keys, hp: jax.lax.map(lambda args: trainer.init(*args), (keys, hp)))

    def _compile(self, fn: Callable) -> Callable:
        if not self.sharded:
            return jax.jit(fn)
        spec = PartitionSpec(POP_AXIS)
        return jax.jit(jax.shard_map(fn, mesh=self.mesh, in_specs=spec, out_specs=spec, check_vma=False))

    def place(self, tree: Any) -> Any:
        """Host arrays (leading axis P) placed for this runner: sharded over the mesh, or on the
        default device."""
        if not self.sharded:
            return jax.tree.map(jnp.asarray, tree)
        size = jax.tree.leaves(tree)[0].shape[0]
        if size % self.mesh.size:
            raise ValueError(f"population size {size} must be a multiple of the {self.mesh.size} devices of the mesh")
        return shard_population(tree, self.mesh)

    def init(self, keys: Any, hparams: HyperParams) -> Any:
        """Runner states (leading axis P) of keys (P, 2) and hparams (P,), both placed by :meth:`place`."""
        return self._init(keys, hparams)

    def run(self, runners: Any, hparams: HyperParams, num_updates: int) -> tuple[Any, dict[str, jax.Array]]:
        """``num_updates`` more updates of every agent; metrics[name] has shape (P, num_updates)."""
        fn = self._runs.get(num_updates)
        if fn is None:
            trainer = self.trainer
            fn = self._runs[num_updates] = self._compile(
                lambda r, hp: jax.vmap(lambda a, h: trainer.run(a, h, num_updates))(r, hp))
        return fn(runners, hparams)
