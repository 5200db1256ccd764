"""The allocation environment (MODEL.md section 6), its action wrappers, baselines, evaluation and adapters.

>>> import jax, jax.numpy as jnp
>>> from jaxsplit import envs
>>> env, params = envs.make("alloc-v0")
>>> obs, state = env.reset(jax.random.key(0), params)
>>> obs, state, reward, terminated, truncated, info = env.step(jax.random.key(1), state, jnp.ones(4), params)
"""

from . import actions, policies, spaces
from .actions import ACTIONS, wrap_action
from .alloc import DEFAULT_MODELS, SPLIT_RULES, AllocationEnv, EnvParams, EnvState
from .evaluation import Protocol, evaluate, evaluate_baselines, search_best_clip, search_best_constant
from .registry import register
from .spec import MAIN, PLAIN, EnvSpec, load_cluster, make, named, registered
from .wrappers import LogWrapper

__all__ = ["AllocationEnv", "EnvParams", "EnvState", "DEFAULT_MODELS", "SPLIT_RULES", "ACTIONS", "EnvSpec", "MAIN", "PLAIN", "make", "named",
           "register", "registered", "Protocol", "evaluate", "evaluate_baselines", "search_best_constant", "search_best_clip", "policies", "actions", "spaces",
           "wrap_action", "load_cluster", "LogWrapper"]
