"""The random draws of the allocation environment (MODEL.md section 6): each episode's cluster, devices
and load, each request's model, and the devices leaving and coming back between arrivals.

Pure functions of a key and the traced :class:`~jaxsplit.envs.alloc.EnvParams`; ``n`` is N and
``dtype`` the environment's float dtype (the shape and dtype of what is drawn).
``params`` is typed Any: alloc imports this module, so it does not import alloc back.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxsplit.latency import Cluster


__all__ = ["cluster", "pool", "load", "model", "churn", "load_group"]


def cluster(key: jax.Array, params: Any, n: int, dtype) -> Cluster:
    """One cluster: log-uniform in the ranges, device 0 local; or the fixed one. Fields (N,)."""
    kf, kb, kt = jax.random.split(key, 3)

    def loguniform(k, lo, hi):
        u = jax.random.uniform(k, (n,), dtype)
        return jnp.exp(jnp.log(lo) + u * (jnp.log(hi) - jnp.log(lo)))

    flops = loguniform(kf, params.flops_min, params.flops_max)
    bandwidth = loguniform(kb, params.bandwidth_min, params.bandwidth_max).at[0].set(jnp.inf)
    latency = (params.latency_min + jax.random.uniform(kt, (n,), dtype)
               * (params.latency_max - params.latency_min)).at[0].set(0.0)
    fixed = params.fixed_cluster
    return Cluster(jnp.where(fixed, params.cluster_flops, flops),
                   jnp.where(fixed, params.cluster_bandwidth, bandwidth),
                   jnp.where(fixed, params.cluster_latency, latency))


def pool(key: jax.Array, params: Any, n: int, dtype) -> jax.Array:
    """The devices of an episode, (N,) bool: the first m, m uniform in [devices_min, devices_max];
    or the fixed cluster's."""
    u = jax.random.uniform(key, (), dtype)
    count = jnp.minimum(jnp.floor(params.devices_min + u * (params.devices_max - params.devices_min + 1.0)),
                        params.devices_max)
    drawn = jnp.arange(n) < count
    return jnp.where(params.fixed_cluster, params.cluster_present, drawn)


def load(key: jax.Array, params: Any, dtype) -> jax.Array:
    """rho, uniform in [load_min, load_max]."""
    u = jax.random.uniform(key, (), dtype)
    return params.load_min + u * (params.load_max - params.load_min)


def model(key: jax.Array, params: Any, k: int) -> jax.Array:
    """A model index in [0, K) drawn from the mix; int32."""
    return jax.random.choice(key, k, p=params.mix).astype(jnp.int32)


def churn(key: jax.Array, present: jax.Array, pool: jax.Array, e_mean: jax.Array, gap: jax.Array,
          params: Any, dtype) -> jax.Array:
    """The devices present at the next arrival, ``gap`` seconds on, of those ``present`` now (N,) bool
    among the episode's ``pool`` (N,) bool; (N,) bool.

    Each device of the pool but the coordinator is a two-state Markov chain in continuous time,
    leaving at rate c = churn and coming back at rate r = rejoin (per ``e_mean`` of time), sampled at
    the arrivals: over t = gap / e_mean a present device is away at the end with probability
    c / (c + r) (1 - exp(-(c + r) t)), an absent one back with r / (c + r) (1 - exp(-(c + r) t))
    (independent draws). A device is thus present a fraction r / (c + r) of the time, whatever
    the arrivals. What a leaving device holds runs to its end; it gets nothing new while away."""
    u = jax.random.uniform(key, present.shape, dtype)
    t = gap / e_mean
    total = params.churn + params.rejoin
    moved = -jnp.expm1(-total * t) / jnp.where(total > 0, total, 1.0)  # (1 - e^{-(c+r)t}) / (c + r)
    leave = params.churn * moved
    back = params.rejoin * moved
    flip = jnp.where(present, u < leave, u < back)
    return (pool & (present ^ flip)).at[0].set(True)


def load_group(load: jax.Array, params: Any, dtype) -> jax.Array:
    """Where ``load`` lies in [load_min, load_max], as a fraction in [0, 1] (0 for a point range)."""
    span = params.load_max - params.load_min
    frac = (load - params.load_min) / jnp.where(span > 0, span, 1.0)
    return jnp.clip(jnp.where(span > 0, frac, 0.0), 0.0, 1.0).astype(dtype)
