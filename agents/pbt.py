"""Population-based training inside the population arrays (Jaderberg et al., 2017).

Between chunks of updates, the worst ``fraction`` of the members (by fitness, the mean training
reward of the chunk) copy the network parameters, optimiser state and normaliser statistics of
members drawn from the best ``fraction``, and perturb each searched setting: a range is multiplied by
``perturb`` or ``1 / perturb`` (each with probability 1/2) and clipped into the range; a list moves to
a uniformly drawn value with probability ``resample`` and stays otherwise. Everything happens on the
population's arrays in one jitted function, so no program is compiled again; each member keeps its
own environments and key. The draw depends only on the key, so the same key copies the same members.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .ppo import TRACED, HyperParams
from .space import Dimension


def _get(hp: HyperParams, name: str) -> jax.Array:
    return getattr(hp, name) if name in TRACED else getattr(hp.env, name)


def _set(hp: HyperParams, name: str, value: jax.Array) -> HyperParams:
    if name in TRACED:
        return hp.replace(**{name: value})
    return hp.replace(env=hp.env.replace(**{name: value}))


def exploit_explore(key: jax.Array, fitness: jax.Array, runners: Any, hparams: HyperParams,
                    dims: Sequence[Dimension], fraction: float = 0.25, perturb: float = 1.25,
                    resample: float = 0.25) -> tuple[Any, HyperParams, jax.Array]:
    """One exploit-and-explore step; jit it with ``dims``, ``fraction``, ``perturb``, ``resample`` static.

    Args:
      key: PRNG key.
      fitness: (P,) higher is better.
      runners: runner states with leading axis P.
      hparams: HyperParams with leaves of leading axis P.
      dims: the searched settings (their ranges bound the perturbations).
    Returns:
      ``(runners, hparams, source)``: ``source[p]`` is the member p copied (p itself when kept).
    """
    size = fitness.shape[0]
    count = max(1, int(fraction * size))
    if 2 * count > size:
        raise ValueError(f"PBT needs at least {2 * count} members for fraction {fraction}, got {size}")
    k_pick, k_explore = jax.random.split(key)
    order = jnp.argsort(-fitness, stable=True)  # best first; ties keep member order
    top, bottom = order[:count], order[size - count:]
    chosen = top[jax.random.randint(k_pick, (count,), 0, count)]
    source = jnp.arange(size).at[bottom].set(chosen)
    replaced = source != jnp.arange(size)
    take = lambda x: x[source]
    runners = runners.replace(params=jax.tree.map(take, runners.params),
                              opt_state=jax.tree.map(take, runners.opt_state),
                              obs_stats=jax.tree.map(take, runners.obs_stats),
                              ret_stats=jax.tree.map(take, runners.ret_stats))
    hparams = jax.tree.map(take, hparams)
    for i, dim in enumerate(dims):
        k_dim = jax.random.fold_in(k_explore, i)
        value = _get(hparams, dim.name)
        if dim.choices is not None:
            k_coin, k_new = jax.random.split(k_dim)
            choices = jnp.asarray(dim.choices, value.dtype)
            new = choices[jax.random.randint(k_new, (size,), 0, len(dim.choices))]
            new = jnp.where(jax.random.uniform(k_coin, (size,)) < resample, new, value)
        else:
            up = jax.random.bernoulli(k_dim, 0.5, (size,))
            new = jnp.clip(value * jnp.where(up, perturb, 1.0 / perturb), dim.low, dim.high).astype(value.dtype)
        hparams = _set(hparams, dim.name, jnp.where(replaced, new, value))
    return runners, hparams, source


def member_values(hparams: HyperParams, dims: Sequence[Dimension]) -> list[dict[str, float]]:
    """Each member's values of the searched settings (host floats)."""
    columns = {d.name: np.asarray(jax.device_get(_get(hparams, d.name)), np.float64) for d in dims}
    size = len(next(iter(columns.values()))) if columns else 0
    return [{name: float(col[p]) for name, col in columns.items()} for p in range(size)]
