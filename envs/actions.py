"""Action wrappers: how an agent's action becomes the shares (N,) the allocation environment reserves.

Each wrapper keeps the wrapped environment's ``reset``, state, observation and ``info`` and changes only
the action: ``action_space(params)`` says what the agent outputs (a :class:`~jaxsplit.envs.spaces.Box`
for a continuous distribution, :class:`~jaxsplit.envs.spaces.Discrete` or
:class:`~jaxsplit.envs.spaces.MultiDiscrete` for a categorical one), and
``decode(action, state, params)`` turns it into shares, reading the free shares from the state when the
rule needs them. ``step(key, state, action, params)`` is the wrapped step on the decoded shares.

Forms (:data:`ACTIONS`):

- ``per_device``: one share per device (N outputs).
- ``common``: one share for the request, given on every device (the form of the constant-share
  baselines, made to depend on the observation).
- ``free_clip``: a cap and a floor; every device gives its free share clipped to [min(floor, cap), cap]:
  the request takes what is free now, within bounds.
- ``clip_pairs``: one choice among the (cap, floor) pairs of nonzero levels with floor <= cap
  (:func:`clip_pairs`): the rules of free_clip, the common shares (floor = cap) among them.

Levels: with ``levels`` K > 0, a discrete form picks among the levels of :func:`share_grid`
({0, 1/K, ..., 1/3, 1/2, 1}), and a continuous form rounds its values to the nearest level
(:func:`snap_shares`), so that concurrent requests can pack a device exactly (two halves, three thirds).
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from . import spaces

#: action forms (see the module docstring)
ACTIONS = ("per_device", "common", "free_clip", "clip_pairs")


def share_grid(levels: int) -> jax.Array:
    """The sorted share levels {0} + {1/k : k = levels..1}; float32 (levels + 1,)."""
    return jnp.asarray([0.0] + [1.0 / k for k in range(levels, 0, -1)], jnp.float32)


def clip_pairs(levels: int | Sequence[float]) -> jax.Array:
    """The (cap, floor) pairs of the ``clip_pairs`` form: every pair of nonzero levels of
    :func:`share_grid` (``levels`` an int) or of the given shares (a sequence) with floor <= cap,
    ordered by cap then floor; float32 (L (L + 1) / 2, 2) for L levels. A pair with floor = cap is the
    common share cap."""
    if isinstance(levels, int):
        grid = [1.0 / k for k in range(levels, 0, -1)]  # the nonzero levels of share_grid, in numbers
    else:
        grid = sorted(float(v) for v in levels)
    pairs = [(cap, floor) for i, cap in enumerate(grid) for floor in grid[: i + 1]]
    return jnp.asarray(pairs, jnp.float32)


def clip_free(free: jax.Array, cap: jax.Array | float, floor: jax.Array | float) -> jax.Array:
    """The free_clip rule: each device's free share ``free`` (..., N) clipped to [min(floor, cap), cap].

    ``cap`` and ``floor`` are shares, scalars or (..., 1) so that they broadcast over the devices; a
    floor above the cap counts as the cap (the request then takes cap everywhere). Shared by the
    ``free_clip`` and ``clip_pairs`` wrappers and the ``best_clip`` baseline, so that the three give
    the same shares for the same (cap, floor)."""
    cap = jnp.asarray(cap, free.dtype)
    return jnp.clip(free, jnp.minimum(jnp.asarray(floor, free.dtype), cap), cap)


def snap_shares(action: jax.Array, levels: int) -> jax.Array:
    """Round every value of ``action`` (..., D) to the nearest level of :func:`share_grid` (identity
    when ``levels`` is 0)."""
    if levels == 0:
        return action
    grid = share_grid(levels)
    return grid[jnp.argmin(jnp.abs(action[..., None] - grid), axis=-1)]


class ShareAction:
    """Base of the action wrappers: the wrapped environment with another action space.

    Attributes other than ``step``, ``action_space`` and ``decode`` are the wrapped environment's.
    ``unwrapped`` is the innermost environment.
    """

    #: the form's name (one of :data:`ACTIONS`)
    form: str = ""

    def __init__(self, env: Any, levels: int = 0, discrete: bool = False):
        if not isinstance(levels, int) or levels < 0:
            raise ValueError(f"field 'share_levels': must be a non-negative integer, got {levels!r}")
        if discrete and levels < 1:
            raise ValueError(f"field 'share_levels': a discrete {self.form} action needs share_levels >= 1, "
                             f"got {levels!r}")
        self.env = env
        self.levels = levels
        self.discrete = discrete

    def __getattr__(self, name: str) -> Any:
        if name == "env":  # not set yet (copy.copy builds the object before its attributes)
            raise AttributeError(name)
        return getattr(self.env, name)

    @property
    def unwrapped(self) -> Any:
        return getattr(self.env, "unwrapped", self.env)

    #: values the agent chooses (N for per_device, 1 for common, 2 for free_clip)
    def _width(self) -> int:
        raise NotImplementedError

    def action_space(self, params: Any = None) -> spaces.Space:
        # a per-device action on an observation of device items: one entry per item
        items = "devices" if self.form == "per_device" and getattr(self.unwrapped, "layout", None) else None
        if self.discrete:
            return spaces.MultiDiscrete((self.levels + 1,) * self._width(), items=items)
        return spaces.Box(0.0, 1.0, (self._width(),), jnp.float32, items=items)

    def _values(self, action: jax.Array) -> jax.Array:
        """The chosen values (..., width) as shares: a level's share, or the value rounded to the levels."""
        if self.discrete:
            return share_grid(self.levels)[action.astype(jnp.int32)]
        return snap_shares(action.astype(jnp.float32), self.levels)

    def decode(self, action: jax.Array, state: Any, params: Any) -> jax.Array:
        """The shares (N,) that the wrapped environment receives for ``action`` in ``state``."""
        raise NotImplementedError

    def with_env(self, env: Any) -> "ShareAction":
        """The same action form around another environment (for example one with longer episodes)."""
        out = copy.copy(self)
        out.env = env
        return out

    def reset(self, key: jax.Array, params: Any):
        return self.env.reset(key, params)

    def step(self, key: jax.Array, state: Any, action: jax.Array, params: Any):
        want = tuple(self.action_space(params).shape)
        if tuple(jnp.shape(action)) != want:  # shapes are static: checked when traced, never inside the program
            raise ValueError(f"field 'action': expected shape {want} for {type(self).__name__} on "
                             f"{self.unwrapped.num_devices} devices, got shape {tuple(jnp.shape(action))}")
        return self.env.step(key, state, self.decode(action, state, params), params)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.env!r}, levels={self.levels}, discrete={self.discrete})"


class PerDevice(ShareAction):
    """One share per device."""

    form = "per_device"

    def _width(self) -> int:
        return int(self.unwrapped.num_devices)

    def decode(self, action, state, params):
        return self._values(action)


class Common(ShareAction):
    """One share for the request, given on every device."""

    form = "common"

    def _width(self) -> int:
        return 1

    def decode(self, action, state, params):
        return jnp.broadcast_to(self._values(action), (self.unwrapped.num_devices,))


class FreeClip(ShareAction):
    """A cap and a floor: every device gives its free share clipped to [min(floor, cap), cap]."""

    form = "free_clip"

    def _width(self) -> int:
        return 2

    def decode(self, action, state, params):
        value = self._values(action)
        cap, floor = value[..., :1], value[..., 1:2]
        return clip_free(self.unwrapped.free_shares(state).astype(value.dtype), cap, floor)


class ClipPairs(ShareAction):
    """One of the (cap, floor) pairs of :func:`clip_pairs`; every device gives its free share clipped
    to [floor, cap]. ``pair_levels`` (shares in (0, 1]) replaces the nonzero levels of the grid."""

    form = "clip_pairs"

    def __init__(self, env: Any, levels: int = 0, discrete: bool = True, pair_levels: Sequence[float] = ()):
        if not discrete:
            raise ValueError("field 'distribution': the clip_pairs action is categorical (discrete) only")
        pair_levels = tuple(float(v) for v in pair_levels)
        if any(not 0 < v <= 1 for v in pair_levels) or len(set(pair_levels)) != len(pair_levels):
            raise ValueError(f"field 'pair_levels': must be distinct shares in (0, 1], got {pair_levels!r}")
        if not pair_levels and (not isinstance(levels, int) or levels < 1):
            raise ValueError(f"field 'share_levels': clip_pairs without pair_levels needs share_levels >= 1, "
                             f"got {levels!r}")
        self.env, self.levels, self.discrete = env, int(levels), True
        self.pair_levels = pair_levels
        self.pairs = clip_pairs(pair_levels or levels)

    def action_space(self, params: Any = None) -> spaces.Discrete:
        return spaces.Discrete(int(self.pairs.shape[0]))

    def decode(self, action, state, params):
        pair = self.pairs[jnp.asarray(action).astype(jnp.int32)]
        return clip_free(self.unwrapped.free_shares(state).astype(pair.dtype), pair[..., :1], pair[..., 1:2])

    def __repr__(self) -> str:
        return f"ClipPairs({self.env!r}, levels={self.levels}, pair_levels={self.pair_levels})"


_FORMS = {cls.form: cls for cls in (PerDevice, Common, FreeClip, ClipPairs)}


def wrap_action(env: Any, action: str = "per_device", discrete: bool = False, share_levels: int = 0,
                pair_levels: Sequence[float] = ()) -> ShareAction:
    """``env`` with the action form ``action`` (:data:`ACTIONS`); ValueError names a bad field."""
    if action not in _FORMS:
        raise ValueError(f"field 'action': unknown action form {action!r}; known: {', '.join(ACTIONS)}")
    if pair_levels and action != "clip_pairs":
        raise ValueError(f"field 'pair_levels': only the clip_pairs action uses it, got action={action!r}")
    if action == "clip_pairs":
        return ClipPairs(env, share_levels, discrete, pair_levels)
    return _FORMS[action](env, share_levels, discrete)
