"""The allocation environment (MODEL.md section 6), its baselines, evaluation and adapters.

>>> import jax
>>> from jaxsplit import envs
>>> env, params = envs.make("alloc-v0")
>>> obs, state = env.reset(jax.random.key(0), params)
>>> obs, state, reward, terminated, truncated, info = env.step(jax.random.key(1), state, obs[:4] * 0 + 1, params)
"""

from .alloc import AllocationEnv, EnvParams, EnvState, DEFAULT_MODELS, SPLIT_RULES
from .registry import make, register, registered

__all__ = ["AllocationEnv", "EnvParams", "EnvState", "DEFAULT_MODELS", "SPLIT_RULES", "make", "register",
           "registered", "evaluate"]


def __getattr__(name):  # lazy: evaluation pulls in the policies
    if name == "evaluate":
        from .evaluation import evaluate

        return evaluate
    if name == "policies":
        from . import policies

        return policies
    raise AttributeError(name)
