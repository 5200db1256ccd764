"""Wrappers of the allocation environment."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from .alloc import AllocationEnv, EnvParams, EnvState


@struct.dataclass
class LogState:
    """State of :class:`LogWrapper`: the inner state and per-episode sums (explicit dtypes).

    Attributes:
      env_state: the wrapped environment's state.
      episode_return: float32, sum of rewards so far in this episode.
      episode_length: int32, requests so far in this episode.
      latency_sum: float32, sum of request latencies (s) so far.
      utilization_sum: float32, sum of request utilisations so far.
      returned_episode_return, returned_episode_length, returned_mean_latency,
      returned_utilization: the same of the last finished episode (mean latency in s, mean U).
    """

    env_state: EnvState
    episode_return: jax.Array
    episode_length: jax.Array
    latency_sum: jax.Array
    utilization_sum: jax.Array
    returned_episode_return: jax.Array
    returned_episode_length: jax.Array
    returned_mean_latency: jax.Array
    returned_utilization: jax.Array


class LogWrapper:
    """Adds episode return, length, mean latency and mean utilisation to ``info``.

    ``info`` gains ``returned_episode`` (bool: an episode ended at this step),
    ``returned_episode_return``, ``returned_episode_length``, ``returned_mean_latency`` and
    ``returned_utilization`` (float32; int32 length): the values of the last finished episode.
    Every other attribute is the wrapped environment's.
    """

    def __init__(self, env: AllocationEnv):
        self._env = env

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    def reset(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, LogState]:
        obs, state = self._env.reset(key, params)
        f0, i0 = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
        return obs, LogState(state, f0, i0, f0, f0, f0, i0, f0, f0)

    def step(self, key: jax.Array, state: LogState, action: jax.Array, params: EnvParams):
        obs, env_state, reward, terminated, truncated, info = self._env.step(key, state.env_state, action, params)
        done = terminated | truncated
        ret = state.episode_return + reward.astype(jnp.float32)
        length = state.episode_length + 1
        lat = state.latency_sum + info["latency"].astype(jnp.float32)
        util = state.utilization_sum + info["utilization"].astype(jnp.float32)
        n = length.astype(jnp.float32)
        new = LogState(
            env_state=env_state,
            episode_return=jnp.where(done, 0.0, ret).astype(jnp.float32),
            episode_length=jnp.where(done, 0, length).astype(jnp.int32),
            latency_sum=jnp.where(done, 0.0, lat).astype(jnp.float32),
            utilization_sum=jnp.where(done, 0.0, util).astype(jnp.float32),
            returned_episode_return=jnp.where(done, ret, state.returned_episode_return).astype(jnp.float32),
            returned_episode_length=jnp.where(done, length, state.returned_episode_length).astype(jnp.int32),
            returned_mean_latency=jnp.where(done, lat / n, state.returned_mean_latency).astype(jnp.float32),
            returned_utilization=jnp.where(done, util / n, state.returned_utilization).astype(jnp.float32),
        )
        info = dict(info, returned_episode=done, returned_episode_return=new.returned_episode_return,
                    returned_episode_length=new.returned_episode_length,
                    returned_mean_latency=new.returned_mean_latency, returned_utilization=new.returned_utilization)
        return obs, new, reward, terminated, truncated, info
