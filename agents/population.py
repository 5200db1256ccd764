"""Populations of agents (seeds x hyperparameters) trained in one call, sharded over devices and hosts.

Every hyperparameter in :class:`~jaxsplit.agents.ppo.HyperParams` is traced, so a population is just a
leading axis P on the key and on every hyperparameter: ``jax.jit(jax.vmap(train))``. The population
axis is laid out over a one-dimensional mesh named ``"pop"`` with ``NamedSharding``, so each device
trains P / D agents and no device talks to another during training.

Several hosts: start the same script on every host with ``jax.distributed.initialize(coordinator,
num_processes, process_id)`` called first (on SLURM or TPU pods ``jax.distributed.initialize()`` with no
arguments finds them itself). ``jax.devices()`` then lists the devices of all hosts, the mesh spans
them, each host feeds the shards of its own devices (``jax.make_array_from_callback``), and
:func:`gather` collects the results on every host.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .ppo import HyperParams

#: name of the mesh axis that carries the population.
POP_AXIS = "pop"


def population_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process) with axis ``"pop"``."""
    return Mesh(np.asarray(list(devices) if devices is not None else jax.devices()), (POP_AXIS,))


def population_grid(base: HyperParams, seeds: int | Sequence[int], **grid: Sequence[float]
                    ) -> tuple[np.ndarray, HyperParams, list[dict[str, float]]]:
    """Keys and hyperparameters of the product of ``seeds`` and the value lists in ``grid``.

    Returns ``(keys (P, 2) uint32, hparams with fields of shape (P,), rows)`` where ``rows[p]`` names
    agent p's seed and grid values. Fields not in ``grid`` keep ``base``'s value.
    """
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise ValueError("seeds must not be empty")
    for name, values in grid.items():
        if name not in HyperParams.__dataclass_fields__:
            raise ValueError(f"unknown hyperparameter {name!r}; choose from {sorted(HyperParams.__dataclass_fields__)}")
        if len(values) == 0:
            raise ValueError(f"grid {name!r} has no values")
    names = list(grid)
    rows = [dict(zip(names, combo), seed=s) for combo in itertools.product(*grid.values()) for s in seeds]
    keys = np.stack([np.asarray(jax.random.PRNGKey(r["seed"])) for r in rows]).astype(np.uint32)
    fields = {}
    for name in HyperParams.__dataclass_fields__:
        default = float(np.asarray(getattr(base, name)))
        fields[name] = np.asarray([r.get(name, default) for r in rows], np.float32)
    return keys, HyperParams(**fields), rows


def _to_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array sharded by ``sharding`` whose local shards come from the host array ``x``."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def shard_population(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf (leading axis P, divisible by the mesh size) on ``mesh`` along ``"pop"``."""
    sharding = NamedSharding(mesh, PartitionSpec(POP_AXIS))
    return jax.tree.map(lambda x: _to_global(x, sharding), tree)


def train_population(train: Callable, keys: np.ndarray, hparams: HyperParams, mesh: Mesh | None = None,
                     sharded: bool = True) -> tuple[Any, dict[str, jax.Array]]:
    """Train P agents at once: ``jit(vmap(train))(keys, hparams)``, sharded over ``mesh``.

    Args:
      train: the function from :func:`~jaxsplit.agents.ppo.make_train`.
      keys: (P, 2) uint32 raw keys (host array, the same on every process).
      hparams: HyperParams with fields of shape (P,) (host arrays, the same on every process).
      mesh: the device mesh (default: :func:`population_mesh` over all devices).
      sharded: False runs unsharded on the default device (for comparison).
    Returns:
      ``(runner_states, metrics)`` with leading axis P; ``metrics[name]`` is (P, num_updates).
    """
    keys = np.asarray(keys, np.uint32)
    size = keys.shape[0]
    if keys.ndim != 2 or keys.shape[1] != 2:
        raise ValueError(f"keys must have shape (P, 2), got {keys.shape}")
    for name, value in vars(hparams).items():
        if np.shape(value) != (size,):
            raise ValueError(f"hparams.{name} must have shape ({size},), got {np.shape(value)}")
    cache = train.__dict__.setdefault("_population_fns", {})
    if not sharded:
        fn = cache.setdefault("plain", jax.jit(jax.vmap(train)))
        return fn(jnp.asarray(keys), jax.tree.map(jnp.asarray, hparams))
    mesh = mesh or population_mesh()
    if size % mesh.size:
        raise ValueError(f"population size {size} must be a multiple of the {mesh.size} devices of the mesh")
    sharding = NamedSharding(mesh, PartitionSpec(POP_AXIS))
    fn = cache.setdefault(("sharded", mesh), jax.jit(jax.vmap(train), out_shardings=sharding))
    return fn(*shard_population((keys, hparams), mesh))


def gather(tree: Any) -> Any:
    """Host numpy copies of (possibly multi-host) global arrays, identical on every process."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)
