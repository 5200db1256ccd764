"""What the allocation environment shows a policy (MODEL.md section 6): the observation vector of an
:class:`~jaxsplit.envs.alloc.EnvState`, its length and layout.

Three kinds (:data:`OBSERVATIONS`): ``"summary"`` (per device the free share and the time to its next
release, plus the cluster, backlog, request and load features), ``"table"`` (the summary followed by
the whole reservation table) and ``"sets"`` (global features, one item per device and one per
reservation slot, the request described by its model's work). :class:`Observer` builds them;
:class:`~jaxsplit.envs.alloc.AllocationEnv` holds one as ``env.observer``.

Every feature is seen at the backlog time b = max(now, start of the previous request), the earliest
time the present request could start, and is clipped to [0, OBS_CLIP].

A ``state`` is an EnvState, typed Any: alloc imports this module, so it does not import alloc back.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsplit.catalogue import RequestLatency

from . import spaces


__all__ = ["OBS_CLIP", "OBSERVATIONS", "SETS_GLOBALS", "SETS_DEVICE", "SETS_SLOT", "Observer", "free_shares"]

#: Observation features are clipped to [0, OBS_CLIP].
OBS_CLIP = 10.0
#: What the observation holds (see :meth:`Observer.__call__`).
OBSERVATIONS = ("summary", "table", "sets")
#: Widths of the "sets" observation: global entries, columns of a device item, columns of a slot item.
SETS_GLOBALS, SETS_DEVICE, SETS_SLOT = 10, 9, 5


def free_shares(state: Any, dtype) -> jax.Array:
    """The share of every device free at the backlog time b = max(now, start of the previous
    request), the earliest time the present request could start; (N,) in [0, 1] of ``dtype``."""
    base = jnp.maximum(state.last_start, 0.0)
    used = (state.res_end > base).astype(dtype) @ state.res_share
    return jnp.clip(1.0 - used, 0.0, 1.0)


def _backlog(state: Any) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The backlog time b (scalar, s), the reservations held at b ((M,) bool), the (M, N) mask of the
    shares they hold and each device's next release after b ((N,) s from now, inf where none)."""
    base = jnp.maximum(state.last_start, 0.0)
    busy = state.res_end > base
    holds = busy[:, None] & (state.res_share > 0)
    release = jnp.min(jnp.where(holds, state.res_end[:, None], jnp.inf), axis=0)
    return base, busy, holds, release


class Observer:
    """The observation of one environment kind: ``observer(state)`` is the (obs_dim,) vector.

    Static settings: ``kind`` (one of :data:`OBSERVATIONS`), ``engine`` (the environment's
    :class:`~jaxsplit.catalogue.RequestLatency`, for N, K, the catalogue and the dtype) and
    ``slots`` M.

    Attributes: ``obs_dim``; ``layout`` (:class:`~jaxsplit.envs.spaces.SetLayout` of the "sets" kind,
    else None); ``model_bytes`` and ``model_layers``, (K,) each, what a "sets" observation says of each
    model's work: bytes of the activations read and written, and the number of layers (multiplicities
    counted).
    """

    def __init__(self, kind: str, engine: RequestLatency, slots: int):
        if kind not in OBSERVATIONS:
            raise ValueError(f"field 'observation': unknown {kind!r}; known: {', '.join(OBSERVATIONS)}")
        self.kind = kind
        self.engine = engine
        self.slots = int(slots)
        n, k, dt = engine.num_devices, engine.num_models, engine.dtype
        self.obs_dim = 5 * n + k + 4
        if kind == "table":
            self.obs_dim += self.slots * (n + 1)
        self.layout: spaces.SetLayout | None = None
        if kind == "sets":
            self.layout = spaces.set_layout(SETS_GLOBALS, (("devices", n, SETS_DEVICE),
                                                           ("slots", self.slots, SETS_SLOT)))
            self.obs_dim = self.layout.size
        cat = engine.catalogue
        rows = np.asarray(cat.layers.in_height, np.float64) * np.asarray(cat.layers.in_row_bytes, np.float64) \
            + np.asarray(cat.layers.out_height, np.float64) * np.asarray(cat.layers.out_row_bytes, np.float64)
        count = np.asarray(cat.count, np.float64)
        self.model_bytes = jnp.asarray((rows * count).sum(1), dt)
        self.model_layers = jnp.asarray(count.sum(1), dt)

    def __call__(self, state: Any) -> jax.Array:
        """The observation of ``state``: :meth:`summary` (with its table for ``"table"``) or :meth:`sets`."""
        if self.kind == "sets":
            return self.sets(state)
        return self.summary(state)

    def summary(self, state: Any) -> jax.Array:
        """The ``"summary"`` / ``"table"`` observation (obs_dim,) in the env dtype (float32 unless x64),
        in [0, OBS_CLIP]; obs_dim = 5N + K + 4, plus M (N + 1) with ``"table"``. An absent device's
        entries are 0.

        Layout: free share at b (N), log1p(time from now to each device's next release after b / e_mean) (N),
        F_i / 1e11 (N), 10 * (1 MB transfer time at B_i, s) (N), tau_i / 5 ms (N),
        log1p(b / e_mean) (1), model one-hot (K), log1p(E_ref(k) / e_mean) (1),
        log1p(work(k) / 1 GFLOP) / 4 (1), rho (1).
        With ``"table"`` then M rows of N + 1 (row-major), one per reservation still held at b, ordered
        by remaining time, longest first, then zero rows for the free slots: log1p(time from b to its
        end / e_mean) (1), its shares (N).
        """
        dt = self.engine.dtype
        base, busy, _, release = _backlog(state)
        free = free_shares(state, dt)
        release = jnp.where(jnp.isfinite(release), release, 0.0)
        c = state.cluster
        scale = state.e_mean
        on = state.present.astype(dt)  # an absent device shows nothing
        feats = [
            free * on,
            jnp.log1p(release / scale) * on,
            c.flops / 1e11 * on,
            10.0 * 1e6 / c.bandwidth * on,
            c.latency / 5e-3 * on,
            jnp.log1p(base / scale)[None],
            jax.nn.one_hot(state.model, self.engine.num_models, dtype=dt),
            jnp.log1p(state.e_ref[state.model] / scale)[None],
            (jnp.log1p(self.engine.catalogue.work[state.model] / 1e9) / 4.0)[None],
            state.load[None],
        ]
        if self.kind == "table":
            feats.append(self.table_rows(state))
        return jnp.clip(jnp.concatenate(feats), 0.0, OBS_CLIP).astype(dt)

    def table_rows(self, state: Any) -> jax.Array:
        """The reservation table of the ``"table"`` observation, (M * (N + 1),) unclipped: per slot
        log1p(time from b to its end / e_mean) and its shares, longest first, free slots as zeros."""
        base, busy, _, _ = _backlog(state)
        remaining = jnp.where(busy, state.res_end - base, 0.0)
        order = jnp.argsort(-remaining, stable=True)
        rows = jnp.concatenate([jnp.log1p(remaining[order] / state.e_mean)[:, None],
                                jnp.where(busy[order, None], state.res_share[order], 0.0)], axis=1)
        return rows.reshape(-1)

    def sets(self, state: Any) -> jax.Array:
        """The ``"sets"`` observation (G + N * 9 + M * 5,) in [0, OBS_CLIP]: a global part, then one item
        per device, then one per reservation slot (layout :attr:`layout`). Times are in units of the
        episode's E_ref-mean, capacities relative to the present devices' total, so nothing depends
        on N or on the catalogue. Column 0 of an item is its mask; an absent device and a free slot
        are all zeros. With b the backlog time, k the request's model:

        - global (10): log1p(b / e_mean), rho, log1p(E_ref(k) / e_mean), log1p(work(k) / 1 GFLOP) / 4,
          log1p(bytes(k) / 1 MB) / 4 (activations read and written), log1p(layers(k)) / 4,
          log(E_ref(k) / (work(k) / sum of the episode's F_i)) (the overhead of splitting k over the
          cluster), log(present devices) / 2, reservations held at b / M, free compute at b / present
          compute.
        - device (9): present, coordinator, free share at b, log1p(time to its next release after b /
          e_mean), log(F_i / 1 GFLOP/s) / 3, F_i / present compute, 10 * (1 MB transfer time at B_i, s),
          tau_i / 5 ms, log1p(share-weighted mean time to the end of what it holds / e_mean).
        - slot (5): held at b, log1p(time from b to its end / e_mean), present compute it holds / present
          compute, its largest share on a present device, present devices it uses / present devices.
        """
        dt = self.engine.dtype
        base, busy, holds, release = _backlog(state)
        on = state.present.astype(dt)
        free = free_shares(state, dt) * on
        release = jnp.where(jnp.isfinite(release), release - base, 0.0)
        remaining = jnp.where(busy, state.res_end - base, 0.0)  # (M,)
        held_share = jnp.where(holds, state.res_share, 0.0)  # (M, N)
        weight = held_share.sum(0)
        drain = jnp.where(weight > 0, (held_share * remaining[:, None]).sum(0) / jnp.where(weight > 0, weight, 1.0), 0.0)
        c, scale, k = state.cluster, state.e_mean, state.model
        flops_on = c.flops * on
        compute = jnp.sum(flops_on)
        pool_compute = jnp.sum(c.flops * state.pool.astype(dt))
        n_on = jnp.sum(on)
        e_k, work = state.e_ref[k], self.engine.catalogue.work[k]
        glob = jnp.stack([
            jnp.log1p(base / scale), state.load, jnp.log1p(e_k / scale), jnp.log1p(work / 1e9) / 4.0,
            jnp.log1p(self.model_bytes[k] / 1e6) / 4.0, jnp.log1p(self.model_layers[k]) / 4.0,
            jnp.log(jnp.maximum(e_k * pool_compute / work, 1.0)), jnp.log(n_on) / 2.0,
            jnp.sum(busy).astype(dt) / self.slots, jnp.sum(free * c.flops) / compute])
        coordinator = (jnp.arange(self.engine.num_devices) == 0).astype(dt)
        devices = jnp.stack([
            on, coordinator, free, jnp.log1p(release / scale), jnp.maximum(jnp.log(c.flops / 1e9), 0.0) / 3.0,
            c.flops / compute, 10.0 * 1e6 / c.bandwidth, c.latency / 5e-3, jnp.log1p(drain / scale)], axis=1) * on[:, None]
        held = busy.astype(dt)
        slot_share = state.res_share * on  # shares on present devices
        slots = jnp.stack([
            held, jnp.log1p(remaining / scale), (slot_share @ c.flops) / compute, jnp.max(slot_share, axis=1),
            jnp.sum(slot_share > 0, axis=1).astype(dt) / n_on], axis=1) * held[:, None]
        obs = jnp.concatenate([glob, devices.reshape(-1), slots.reshape(-1)])
        return jnp.clip(obs, 0.0, OBS_CLIP).astype(dt)
