"""Gymnasium adapters of the allocation environment, for libraries outside JAX.

``GymnasiumAllocationEnv`` is a single :class:`gymnasium.Env` (after truncation, call ``reset``);
``GymnasiumAllocationVectorEnv`` is a :class:`gymnasium.vector.VectorEnv` that runs ``num_envs``
environments in one jitted, vmapped step and resets them in the same step
(``AutoresetMode.SAME_STEP``: the returned observation starts the next episode, and
``info["final_obs"]`` with mask ``info["_final_obs"]`` holds the last observation of the finished one).
Observations are float32 in [0, 10]; actions float32 shares in [0, 1] (clipped; NaN counts as 0).
Random keys come from the adapter's ``np_random``, so ``reset(seed=...)`` makes a run reproducible.

>>> from jaxsplit.envs.gym_adapter import GymnasiumAllocationEnv
>>> env = GymnasiumAllocationEnv("alloc-v0", requests=50)
>>> obs, info = env.reset(seed=0)
"""

from __future__ import annotations

from typing import Any

import gymnasium
import jax
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from .alloc import AllocationEnv, EnvParams
from .spec import make

_INFO_KEYS = ("latency", "wait", "exec_time", "utilization", "model", "invalid")


def _spaces(env: AllocationEnv) -> tuple[gymnasium.spaces.Box, gymnasium.spaces.Box]:
    lo, hi = env.observation_bounds()
    alo, ahi = env.action_bounds()
    return (gymnasium.spaces.Box(lo, hi, dtype=np.float32), gymnasium.spaces.Box(alo, ahi, dtype=np.float32))


def _key(rng: np.random.Generator) -> jax.Array:
    return jax.random.key(int(rng.integers(0, 2**31 - 1)))


class GymnasiumAllocationEnv(gymnasium.Env):
    """One allocation environment behind the Gymnasium API (``make(name, **overrides)`` settings)."""

    metadata = {"render_modes": []}

    def __init__(self, name: str = "alloc-v0", env: AllocationEnv | None = None, params: EnvParams | None = None,
                 **overrides: Any):
        env, params = _resolve(name, env, params, overrides)
        self.env, self.params = env, params
        self.observation_space, self.action_space = _spaces(env)
        self._reset = jax.jit(env.reset)
        self._step = jax.jit(env.step)
        self._state = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        obs, self._state = self._reset(_key(self.np_random), self.params)
        return np.asarray(obs, np.float32), {}

    def step(self, action):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, np.float32).reshape(self.env.num_devices)
        obs, self._state, reward, term, trunc, info = self._step(_key(self.np_random), self._state, action, self.params)
        if bool(trunc):
            obs = info["final_observation"]
        out = {k: np.asarray(info[k]).item() for k in _INFO_KEYS}
        return np.asarray(obs, np.float32), float(reward), bool(term), bool(trunc), out


def _resolve(name: str, env: AllocationEnv | None, params: EnvParams | None,
             overrides: dict[str, Any]) -> tuple[AllocationEnv, EnvParams]:
    """The environment and params an adapter wraps: ``make(name, **overrides)`` unless ``env`` is given;
    ``params`` default to the made (or the env's default) params."""
    if env is None:
        env, made = make(name, **overrides)
        return env, made if params is None else params
    return env, env.default_params() if params is None else params


class GymnasiumAllocationVectorEnv(gymnasium.vector.VectorEnv):
    """``num_envs`` allocation environments stepped together (one jit(vmap) call per step)."""

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int, name: str = "alloc-v0", env: AllocationEnv | None = None,
                 params: EnvParams | None = None, **overrides: Any):
        if int(num_envs) < 1:
            raise ValueError(f"field 'num_envs': must be positive, got {num_envs!r}")
        env, params = _resolve(name, env, params, overrides)
        self.env, self.params = env, params
        self.num_envs = int(num_envs)
        self.single_observation_space, self.single_action_space = _spaces(env)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
        self._step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
        self._state = None

    def _keys(self) -> jax.Array:
        return jax.random.split(_key(self._np_random_or_new()), self.num_envs)

    def _np_random_or_new(self) -> np.random.Generator:
        if self._np_random is None:
            self._np_random, _ = gymnasium.utils.seeding.np_random()
        return self._np_random

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._np_random, self._np_random_seed = gymnasium.utils.seeding.np_random(seed)
        obs, self._state = self._reset(self._keys(), self.params)
        return np.asarray(obs, np.float32), {}

    def step(self, actions):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions, np.float32).reshape(self.num_envs, self.env.num_devices)
        obs, self._state, reward, term, trunc, info = self._step(self._keys(), self._state, actions, self.params)
        trunc = np.asarray(trunc)
        out: dict[str, Any] = {k: np.asarray(info[k]) for k in _INFO_KEYS}
        out["final_obs"] = np.asarray(info["final_observation"], np.float32)
        out["_final_obs"] = trunc.copy()
        return (np.asarray(obs, np.float32), np.asarray(reward, np.float64), np.asarray(term), trunc, out)
