"""The allocation environment (MODEL.md section 6), its baselines, evaluation and adapters.

>>> import jax, jax.numpy as jnp
>>> from jaxsplit import envs
>>> env, params = envs.make("alloc-v0")
>>> obs, state = env.reset(jax.random.key(0), params)
>>> obs, state, reward, terminated, truncated, info = env.step(jax.random.key(1), state, jnp.ones(4), params)
"""

from . import policies
from .alloc import DEFAULT_MODELS, SPLIT_RULES, AllocationEnv, EnvParams, EnvState
from .evaluation import evaluate
from .registry import make, register, registered
from .wrappers import LogWrapper

__all__ = ["AllocationEnv", "EnvParams", "EnvState", "DEFAULT_MODELS", "SPLIT_RULES", "make", "register",
           "registered", "evaluate", "policies", "LogWrapper"]
