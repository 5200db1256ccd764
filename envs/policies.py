"""Baseline allocation policies of MODEL.md section 6, as jittable functions.

Every baseline has the signature ``policy(key, obs, state, params, env, **options) -> action``:
``obs`` (obs_dim,), ``state`` the environment's :class:`~jaxsplit.envs.EnvState` (the myopic and
fastest-k policies read the cluster and reservations from it), action float32 (N,) in [0, 1].
:func:`get` binds the options and the environment and returns a :class:`Policy`, a callable
``policy(key, obs, state, params) -> action`` that :func:`jaxsplit.envs.evaluate` runs vmapped.
A learned policy that needs only the observation is any ``fn(key, obs) -> action``; wrap it with
:func:`from_observation` (evaluate does it for you).

Registered names: ``random`` (uniform shares, the paper's starting point), ``whole_cluster`` (all 1),
``free_now`` (take what is free, or the whole cluster when nothing usable is free), ``constant`` (share
``c`` everywhere), ``best_constant`` (the c of a per-load table found by
:func:`jaxsplit.envs.evaluation.search_best_constant`), ``best_clip`` (every device's free share clipped
to [floor, cap], the rule of the ``free_clip`` action, with (cap, floor) from a per-load table found by
:func:`jaxsplit.envs.evaluation.search_best_clip`), ``fastest_k`` (share 1 on the ``k`` fastest devices) and ``myopic``
(the candidate allocation that finishes this request first).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from .actions import clip_free
from .alloc import AllocationEnv, EnvParams, EnvState


@dataclasses.dataclass(frozen=True)
class Policy:
    """A policy bound to an environment: ``policy(key, obs, state, params) -> action`` (N,)."""

    name: str
    fn: Callable[[jax.Array, jax.Array, EnvState, EnvParams], jax.Array]

    def __call__(self, key, obs, state, params):
        return self.fn(key, obs, state, params)


def from_observation(fn: Callable[[jax.Array, jax.Array], jax.Array], name: str = "policy") -> Policy:
    """Wrap an observation-only policy ``fn(key, obs) -> action`` (e.g. a trained network)."""
    return Policy(name, lambda key, obs, state, params: fn(key, obs))


def random_policy(key, obs, state, params, env: AllocationEnv):
    """Uniform shares in [0, 1]^N."""
    return jax.random.uniform(key, (env.num_devices,), jnp.float32)


def whole_cluster(key, obs, state, params, env: AllocationEnv):
    """Every device at share 1 (each request runs alone)."""
    return jnp.ones((env.num_devices,), jnp.float32)


def free_now(key, obs, state, params, env: AllocationEnv):
    """Take what is free: the shares free at the backlog time b = max(now, previous start)
    (:meth:`~jaxsplit.envs.AllocationEnv.free_shares`); if none reaches min_share there, the shares
    free right after the next release after b (the request then waits for that release)."""
    free = env.free_shares(state).astype(jnp.float32)
    usable = (free >= params.min_share) & state.present
    base = jnp.maximum(state.last_start, 0.0)
    busy = state.res_end > base
    release = jnp.min(jnp.where(busy, state.res_end, jnp.inf))
    later = (state.res_end > release).astype(state.res_share.dtype) @ state.res_share
    free_later = jnp.clip(1.0 - later, 0.0, 1.0).astype(jnp.float32)
    return jnp.where(jnp.any(usable), jnp.where(usable, free, 0.0), free_later).astype(jnp.float32)


def constant(key, obs, state, params, env: AllocationEnv, c: float = 0.5):
    """Share ``c`` on every device."""
    return jnp.full((env.num_devices,), c, jnp.float32)


def fastest_devices(state: EnvState, k: int | jax.Array) -> jax.Array:
    """Boolean (N,) mask of the ``k`` present devices with the most FLOP/s (ties to the lower index)."""
    f = jnp.where(state.present, state.cluster.flops, -jnp.inf)
    n = f.shape[-1]
    idx = jnp.arange(n)
    rank = jnp.sum((f[None, :] > f[:, None]) | ((f[None, :] == f[:, None]) & (idx[None, :] < idx[:, None])), axis=-1)
    return (rank < k) & state.present


def fastest_k(key, obs, state, params, env: AllocationEnv, k: int | None = None):
    """Share 1 on the ``k`` fastest present devices (default: half of them, rounded up), 0 elsewhere."""
    k = (jnp.sum(state.present) + 1) // 2 if k is None else int(k)
    return fastest_devices(state, k).astype(jnp.float32)


def best_constant(key, obs, state, params, env: AllocationEnv, loads: Sequence[float] = (1.0,),
                  shares: Sequence[float] = (1.0,)):
    """Share c(rho) everywhere, c from the table (loads, shares) at the load nearest this episode's."""
    loads_a = jnp.asarray(loads, jnp.float32)
    shares_a = jnp.asarray(shares, jnp.float32)
    i = jnp.argmin(jnp.abs(loads_a - state.load.astype(jnp.float32)))
    return jnp.full((env.num_devices,), shares_a[i], jnp.float32)


def best_clip(key, obs, state, params, env: AllocationEnv, loads: Sequence[float] = (1.0,),
              caps: Sequence[float] = (1.0,), floors: Sequence[float] | None = None):
    """Every device's free share clipped to [floor, cap] (:func:`~jaxsplit.envs.actions.clip_free`, the
    rule of the ``free_clip`` action), (cap, floor) from the table (loads, caps, floors) at the load
    nearest this episode's. Without ``floors`` each floor is its cap (a constant share)."""
    loads_a = jnp.asarray(loads, jnp.float32)
    caps_a = jnp.asarray(caps, jnp.float32)
    floors_a = caps_a if floors is None else jnp.asarray(floors, jnp.float32)
    i = jnp.argmin(jnp.abs(loads_a - state.load.astype(jnp.float32)))
    return clip_free(env.free_shares(state).astype(jnp.float32), caps_a[i], floors_a[i])


def myopic_candidates(obs, state, params, env: AllocationEnv) -> jax.Array:
    """Candidate allocations (2N + 3, N): whole cluster, free-now, constant 0.5, each fastest-k
    (k = 1..N) at share 1, and each single device at share 1."""
    n = env.num_devices
    rows = [whole_cluster(None, obs, state, params, env), free_now(None, obs, state, params, env),
            jnp.full((n,), 0.5, jnp.float32)]
    rows += [fastest_devices(state, k).astype(jnp.float32) for k in range(1, n + 1)]
    return jnp.concatenate([jnp.stack(rows), jnp.eye(n, dtype=jnp.float32)])


def myopic(key, obs, state, params, env: AllocationEnv):
    """Earliest finish: the candidate (see :func:`myopic_candidates`) with the smallest start + E."""
    cands = myopic_candidates(obs, state, params, env)

    def finish(action):
        share, _ = env.clean_action(action, params, state.present)
        return env.start_time(state, share) + env.request_time(state, share)

    return cands[jnp.argmin(jax.vmap(finish)(cands))]


#: name -> baseline function ``(key, obs, state, params, env, **options) -> action``
POLICIES: dict[str, Callable[..., jax.Array]] = {
    "random": random_policy,
    "whole_cluster": whole_cluster,
    "free_now": free_now,
    "constant": constant,
    "best_constant": best_constant,
    "best_clip": best_clip,
    "fastest_k": fastest_k,
    "myopic": myopic,
}


def registered() -> list[str]:
    """Names of the baseline policies."""
    return list(POLICIES)


def get(name: str, env: AllocationEnv, **options: Any) -> Policy:
    """Bind baseline ``name`` to ``env`` with ``options`` (c for constant, k for fastest_k, loads and
    shares for best_constant, loads, caps and floors for best_clip). ValueError names the field for an
    unknown name or bad option."""
    if name not in POLICIES:
        raise ValueError(f"field 'policy': unknown policy {name!r}; known: {', '.join(POLICIES)}")
    if name == "constant" and "c" in options and not 0.0 <= float(options["c"]) <= 1.0:
        raise ValueError(f"field 'c': the constant share must be in [0, 1], got {options['c']!r}")
    if name == "fastest_k" and options.get("k") is not None and not 1 <= int(options["k"]) <= env.num_devices:
        raise ValueError(f"field 'k': must be between 1 and {env.num_devices}, got {options['k']!r}")
    if name == "best_clip":
        _check_clip_table(options)
    fn = POLICIES[name]
    return Policy(name, lambda key, obs, state, params: fn(key, obs, state, params, env, **options))


def _check_clip_table(options: dict[str, Any]) -> None:
    """ValueError naming the field of a bad best_clip table: empty, of unequal lengths, a cap or floor
    outside (0, 1], or a given floor above its cap."""
    loads = tuple(options.get("loads", (1.0,)))
    columns = {"loads": loads, "caps": tuple(options.get("caps", (1.0,)))}
    if options.get("floors") is not None:
        columns["floors"] = tuple(options["floors"])
    for field, values in columns.items():
        if not values:
            raise ValueError(f"field '{field}': the best_clip table is empty")
        if len(values) != len(loads):
            raise ValueError(f"field '{field}': needs one value per load ({len(loads)}), got {len(values)}")
    for field in ("caps", "floors"):
        for v in columns.get(field, ()):
            if not 0.0 < float(v) <= 1.0:
                raise ValueError(f"field '{field}': every share must be in (0, 1], got {v!r}")
    for cap, floor in zip(columns["caps"], columns.get("floors", ())):
        if float(floor) > float(cap):
            raise ValueError(f"field 'floors': a floor above its cap ({floor!r} > {cap!r})")
