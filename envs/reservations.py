"""The reservation table of MODEL.md section 6: cleaning an action into shares, and the earliest
time a request can start with its shares free on every device and a free slot.

Pure functions of the state (:class:`~jaxsplit.envs.alloc.EnvState`); the environment and the
policies that look ahead (:mod:`jaxsplit.envs.policies`) share them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

#: Tolerance on the sum of reserved shares per device (float round-off of "take what is free").
SHARE_TOLERANCE = 1e-5


def clean_action(action: jax.Array, min_share: jax.Array, num_devices: int, dtype: Any,
                 present: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Shares actually reserved (N,) and the invalid flag (scalar bool) for ``action`` (N,).

    NaN and +-inf count as 0, values are clipped to [0, 1], an absent device (``present`` (N,) bool
    False) gets 0, shares below ``min_share`` become 0; if nothing remains the request gets
    ``min_share`` on device 0 and is flagged invalid. Raises ValueError (when traced) for a wrong shape.
    """
    if jnp.size(action) != num_devices:  # static: checked when traced
        raise ValueError(f"field 'action': expected {num_devices} shares (shape ({num_devices},)), "
                         f"got shape {tuple(jnp.shape(action))}")
    a = jnp.asarray(action, dtype).reshape(num_devices)
    a = jnp.where(jnp.isfinite(a), a, 0.0)
    if present is not None:
        a = jnp.where(present, a, 0.0)
    a = jnp.clip(a, 0.0, 1.0)
    a = jnp.where(a >= min_share, a, 0.0)
    invalid = jnp.all(a == 0.0)
    fallback = jnp.zeros_like(a).at[0].set(min_share)
    return jnp.where(invalid, fallback, a), invalid


def start_time(res_end: jax.Array, res_share: jax.Array, last_start: jax.Array, share: jax.Array,
               slots: int) -> jax.Array:
    """Earliest start s >= max(0, last_start) with ``share`` (N,) free on every device and a free slot.

    ``res_end`` (M,) and ``res_share`` (M, N) are the reservations. Every reservation made so far has
    started by then (arrival order), so the shares in use at a candidate time c are those of
    reservations with end > c; candidates are the base time and every release after it. Shape:
    scalar, seconds relative to now.
    """
    base = jnp.maximum(last_start, 0.0)
    cand = jnp.concatenate([base[None], jnp.maximum(res_end, base)])  # (M+1,)
    busy = res_end[None, :] > cand[:, None]  # (M+1, M)
    usage = busy.astype(res_share.dtype) @ res_share  # (M+1, N)
    ok = jnp.all(usage + share <= 1.0 + SHARE_TOLERANCE, axis=-1) & (jnp.sum(busy, axis=-1) < slots)
    return jnp.min(jnp.where(ok, cand, jnp.inf))
