"""A tiny environment with the allocation environment's API, for testing the agent in isolation.

Each step shows a target share vector; the reward is the negative mean distance of the action from
it plus ``util_weight`` times a utilisation term. The optimal policy (action = target) is learnable in
seconds, a uniformly random one is clearly worse. Episodes are truncated after ``episode_len`` steps,
with auto-reset and ``info["final_observation"]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class TinyParams:
    util_weight: jax.Array = 0.1
    invalid_penalty: jax.Array = 1.0
    load_min: jax.Array = 0.2
    load_max: jax.Array = 1.5


@struct.dataclass
class TinyState:
    target: jax.Array
    load: jax.Array
    t: jax.Array


class TinyEnv:
    def __init__(self, num_devices: int = 3, episode_len: int = 16):
        self.num_devices = num_devices
        self.episode_len = episode_len
        self.obs_dim = num_devices + 2

    def default_params(self) -> TinyParams:
        return TinyParams()

    def _obs(self, s: TinyState) -> jax.Array:
        return jnp.concatenate([s.target, jnp.stack([s.t / self.episode_len, s.load])]).astype(jnp.float32)

    def reset(self, key, params):
        k1, k2 = jax.random.split(key)
        s = TinyState(target=jax.random.uniform(k1, (self.num_devices,)),
                      load=jax.random.uniform(k2, (), minval=params.load_min, maxval=params.load_max),
                      t=jnp.float32(0.0))
        return self._obs(s), s

    def step(self, key, state, action, params):
        action = jnp.clip(jnp.nan_to_num(action, nan=0.0), 0.0, 1.0)
        err = jnp.abs(action - state.target).mean()
        invalid = (action < 0.05).all()
        util = 1.0 - err
        reward = -err * state.load + params.util_weight * util - params.invalid_penalty * invalid
        k1, k2 = jax.random.split(key)
        moved = state.replace(target=jax.random.uniform(k1, (self.num_devices,)), t=state.t + 1.0)
        truncated = moved.t >= self.episode_len
        final_obs = self._obs(moved)
        reset_obs, reset_state = self.reset(k2, params)
        new_state = jax.tree.map(lambda a, b: jnp.where(truncated, a, b), reset_state, moved)
        obs = jnp.where(truncated, reset_obs, final_obs)
        info = {"final_observation": final_obs, "latency": err, "wait": jnp.float32(0.0), "exec_time": err,
                "utilization": util, "model": jnp.int32(0), "invalid": invalid}
        return obs, new_state, reward.astype(jnp.float32), jnp.bool_(False), truncated, info
