"""A tiny environment that is not the allocation environment, for testing the agent in isolation.

Each step shows a target vector in [0, 1]^dim; the reward is minus the mean distance of the action
from it, times the episode's ``hardness``, plus ``bonus`` times a closeness term. The optimal policy
(action = target) is learnable in seconds, a uniformly random one is clearly worse. Episodes are
truncated after ``episode_len`` steps, with auto-reset and ``info["final_observation"]``;
``info["group"]`` places the episode's hardness in its range, for per-group reward statistics.

It shares no parameter name, observation layout or action form with the allocation environment:
the trainer must get by with its spaces. With ``levels`` L > 0 the action is discrete
(MultiDiscrete, L + 1 choices per entry, choice j meaning j / L).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxsplit.envs import spaces


@struct.dataclass
class TinyParams:
    bonus: jax.Array = 0.1
    hardness_lo: jax.Array = 0.2
    hardness_hi: jax.Array = 1.5


@struct.dataclass
class TinyState:
    target: jax.Array
    hardness: jax.Array
    t: jax.Array


class TinyEnv:
    def __init__(self, dim: int = 3, episode_len: int = 16, levels: int = 0):
        self.dim = dim
        self.episode_len = episode_len
        self.levels = levels

    def default_params(self) -> TinyParams:
        return TinyParams()

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(0.0, 2.0, (self.dim + 2,))

    def action_space(self, params=None):
        if self.levels:
            return spaces.MultiDiscrete((self.levels + 1,) * self.dim)
        return spaces.Box(0.0, 1.0, (self.dim,))

    def _obs(self, s: TinyState) -> jax.Array:
        return jnp.concatenate([s.target, jnp.stack([s.t / self.episode_len, s.hardness])]).astype(jnp.float32)

    def reset(self, key, params):
        k1, k2 = jax.random.split(key)
        s = TinyState(target=jax.random.uniform(k1, (self.dim,)),
                      hardness=jax.random.uniform(k2, (), minval=params.hardness_lo, maxval=params.hardness_hi),
                      t=jnp.float32(0.0))
        return self._obs(s), s

    def step(self, key, state, action, params):
        if self.levels:
            action = action.astype(jnp.float32) / self.levels
        action = jnp.clip(jnp.nan_to_num(action, nan=0.0), 0.0, 1.0)
        err = jnp.abs(action - state.target).mean()
        reward = -err * state.hardness + params.bonus * (1.0 - err)
        k1, k2 = jax.random.split(key)
        moved = state.replace(target=jax.random.uniform(k1, (self.dim,)), t=state.t + 1.0)
        truncated = moved.t >= self.episode_len
        final_obs = self._obs(moved)
        reset_obs, reset_state = self.reset(k2, params)
        new_state = jax.tree.map(lambda a, b: jnp.where(truncated, a, b), reset_state, moved)
        obs = jnp.where(truncated, reset_obs, final_obs)
        span = params.hardness_hi - params.hardness_lo
        info = {"final_observation": final_obs, "error": err,
                "group": jnp.clip((state.hardness - params.hardness_lo) / jnp.maximum(span, 1e-6), 0.0, 1.0)}
        return obs, new_state, reward.astype(jnp.float32), jnp.bool_(False), truncated, info
