"""Action and observation spaces of the JAX environments: what a trainer may know of an environment.

A trainer sees an environment only through ``reset``, ``step``, ``observation_space(params)`` and
``action_space(params)``; the space says the shape and dtype of the arrays and, for an action, which
distribution fits it (a :class:`Box` takes a continuous one, :class:`Discrete` and
:class:`MultiDiscrete` a categorical one). The spaces are static (plain Python values), so a jitted
function can build its networks from them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class SetLayout:
    """How a flat observation vector is made of a global part and sets of items.

    The vector (D,) is the ``globals`` entries, then for each set ``(name, items, width)`` its items
    row-major (``items * width`` entries). Column 0 of every item is its mask: 1 for an item that is
    there (a present device, a held reservation), 0 for padding, whose other columns are 0 as well.
    A network built on a layout treats the items of a set alike (shared weights, pooling), so that its
    output does not depend on their order and a padded item changes nothing.

    Shapes: ``split(obs (..., D))`` gives ``(globals (..., G), {name: (..., items, width)})``.
    """

    globals: int
    sets: tuple[tuple[str, int, int], ...]

    @property
    def size(self) -> int:
        """D, the length of the flat vector."""
        return self.globals + sum(n * w for _, n, w in self.sets)

    def split(self, obs: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The global part (..., G) and each set's items (..., items, width) of ``obs`` (..., D)."""
        lead = obs.shape[:-1]
        out, at = {}, self.globals
        for name, n, w in self.sets:
            out[name] = obs[..., at: at + n * w].reshape(lead + (n, w))
            at += n * w
        return obs[..., : self.globals], out

    def items(self, name: str) -> int:
        """Number of items of set ``name``."""
        return {n: k for n, k, _ in self.sets}[name]

    def tie(self, mean: jax.Array, var: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per-entry statistics (D,) made the same for every item of a set (pooled over its items:
        mean of the means; mean of the variances plus the variance of the means, exact for equal
        counts), and mask columns left unscaled (mean 0, variance 1). Normalising with tied statistics
        keeps a function of the items invariant to their order."""
        g = self.globals
        means, vars_ = [mean[:g]], [var[:g]]
        at = g
        for _, n, w in self.sets:
            m = mean[at: at + n * w].reshape(n, w)
            v = var[at: at + n * w].reshape(n, w)
            pm = m.mean(0)
            pv = v.mean(0) + ((m - pm) ** 2).mean(0)
            pm, pv = pm.at[0].set(0.0), pv.at[0].set(1.0)
            means.append(jnp.tile(pm, n))
            vars_.append(jnp.tile(pv, n))
            at += n * w
        return jnp.concatenate(means), jnp.concatenate(vars_)


def transfer_stats(mean: jax.Array, var: jax.Array, source: SetLayout,
                   target: SetLayout) -> tuple[jax.Array, jax.Array]:
    """Tied statistics (:meth:`SetLayout.tie`) of ``source`` laid out for ``target``, a layout with the
    same global entries and the same sets and widths but other item counts; (target.size,) each."""
    if source.globals != target.globals or [(n, w) for n, _, w in source.sets] != [(n, w) for n, _, w in target.sets]:
        raise ValueError(f"layouts differ in more than their item counts: {source} and {target}")
    means, vars_ = [mean[: source.globals]], [var[: source.globals]]
    at = source.globals
    for (_, n, w), (_, k, _) in zip(source.sets, target.sets):
        means.append(jnp.tile(mean[at: at + w], k))
        vars_.append(jnp.tile(var[at: at + w], k))
        at += n * w
    return jnp.concatenate(means), jnp.concatenate(vars_)


def set_layout(globals_: int, sets: Sequence[tuple[str, int, int]]) -> SetLayout:
    """A checked :class:`SetLayout` (positive sizes, distinct names)."""
    sets = tuple((str(n), int(k), int(w)) for n, k, w in sets)
    if globals_ < 0 or any(k < 1 or w < 1 for _, k, w in sets) or len({n for n, _, _ in sets}) != len(sets):
        raise ValueError(f"invalid set layout: globals={globals_}, sets={sets}")
    return SetLayout(int(globals_), sets)


@dataclasses.dataclass(frozen=True)
class Box:
    """Arrays of ``shape`` with every entry in [low, high] (scalars, the same bound for every entry).

    ``layout`` (observations only): the :class:`SetLayout` of a flat vector made of sets of items.
    ``items`` (actions only): the name of the observation set whose items the entries belong to, one
    entry per item (a per-device action), so that a network can give each its own head.
    """

    low: float
    high: float
    shape: tuple[int, ...]
    dtype: Any = jnp.float32
    layout: SetLayout | None = None
    items: str | None = None

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
    """``len(nvec)`` integers, entry i in {0, ..., nvec[i] - 1}; an action is int32 (len(nvec),).
    ``items``: as :attr:`Box.items`."""

    nvec: tuple[int, ...]
    dtype: Any = jnp.int32
    #: as :attr:`Box.items`: the observation set whose items the entries belong to
    items: str | None = None

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
