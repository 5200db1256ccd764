"""Action and observation spaces of the JAX environments: what a trainer may know of an environment.

A trainer sees an environment only through ``reset``, ``step``, ``observation_space(params)`` and
``action_space(params)``; the space says the shape and dtype of the arrays and, for an action, which
distribution fits it (a :class:`Box` takes a continuous one, :class:`Discrete` and
:class:`MultiDiscrete` a categorical one). The spaces are static (plain Python values), so a jitted
function can build its networks from them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Box:
    """Arrays of ``shape`` with every entry in [low, high] (scalars, the same bound for every entry)."""

    low: float
    high: float
    shape: tuple[int, ...]
    dtype: Any = jnp.float32

    def sample(self, key: jax.Array) -> jax.Array:
        """A uniform draw (finite bounds only)."""
        return jax.random.uniform(key, self.shape, self.dtype, self.low, self.high)

    def contains(self, x: Any) -> bool:
        x = np.asarray(x)
        return x.shape == self.shape and bool(np.all((x >= self.low) & (x <= self.high)))


@dataclasses.dataclass(frozen=True)
class Discrete:
    """One integer in {0, ..., n - 1}; an action is an int32 scalar."""

    n: int
    dtype: Any = jnp.int32

    @property
    def shape(self) -> tuple[int, ...]:
        return ()

    def sample(self, key: jax.Array) -> jax.Array:
        return jax.random.randint(key, (), 0, self.n, self.dtype)

    def contains(self, x: Any) -> bool:
        x = np.asarray(x)
        return x.shape == () and np.issubdtype(x.dtype, np.integer) and 0 <= int(x) < self.n


@dataclasses.dataclass(frozen=True)
class MultiDiscrete:
    """``len(nvec)`` integers, entry i in {0, ..., nvec[i] - 1}; an action is int32 (len(nvec),)."""

    nvec: tuple[int, ...]
    dtype: Any = jnp.int32

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.nvec),)

    def sample(self, key: jax.Array) -> jax.Array:
        return jax.random.randint(key, self.shape, 0, jnp.asarray(self.nvec), self.dtype)

    def contains(self, x: Any) -> bool:
        x = np.asarray(x)
        return (x.shape == self.shape and np.issubdtype(x.dtype, np.integer)
                and bool(np.all((x >= 0) & (x < np.asarray(self.nvec)))))


Space = Box | Discrete | MultiDiscrete
