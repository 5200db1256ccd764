"""Segmentations of a layer table (MODEL.md section 7): the best plan by a shortest path over the cut
points, the per-layer plan of section 3 and the peers' plans, and the latency of a given plan.

:class:`PlanSearch` is that part of :class:`~jaxsplit.planner.Planner`; every method is a pure JAX
function of one cluster (fields (N,)) and one allocation ``share`` (N,). Units: seconds.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from . import solvers
from .latency import Cluster, allocation_rates

#: Plans that ``jaxsplit split --plan`` and the environment's ``planner`` know.
PLANS = ("layer", "fused", "deepthings", "aofl")
#: The partitions of a segment.
PARTITIONS = ("rows", "channels")

#: Candidate kinds, in the order of the candidate axis: L rows singles, L channel singles, S runs.
ROWS, CHANNELS, FUSED = 0, 1, 2


@struct.dataclass
class PlanResult:
    """A plan of one instance (add leading batch axes under ``vmap``).

    Attributes:
      latency: the plan's request latency (s), scalar.
      covering: (L,) int32, the candidate that covers each layer (:meth:`Planner.segments` turns
        it into the list of segments).
      splits: (C, N) int32, every candidate's split (rows or channels per device).
      latencies: (C,) every candidate's latency (s); ``inf`` for a candidate the rule does not allow.
    """

    latency: jax.Array
    covering: jax.Array
    splits: jax.Array
    latencies: jax.Array


class PlanSearch:
    """Plans from the candidates' latencies: the segmentation part of :class:`~jaxsplit.planner.Planner`,
    reading its candidate tables (``candidate_start``, ``candidate_end``, ``candidate_kind``,
    ``num_layers``, ``num_runs``, ``num_candidates``) and its splits and exact latencies
    (``candidate_splits``, ``candidate_latencies``, ``row_times``, ``_allowed``)."""

    def _shortest_path(self, latencies: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Best segmentation over the candidates: (latency (s), covering (L,) int32)."""
        count = self.num_layers
        by_end = [np.nonzero(self.candidate_end == b)[0] for b in range(1, count + 1)]
        width = max(len(ids) for ids in by_end)
        ids = np.zeros((count, width), np.int32)
        mask = np.zeros((count, width), bool)
        for b, found in enumerate(by_end):  # in candidate order: a tie keeps the first (rows before the rest)
            ids[b, :len(found)] = found
            mask[b, :len(found)] = True
        from_pos = self.candidate_start[ids]

        def step(best, x):
            b, cand, valid, start = x
            totals = jnp.where(valid, best[start] + latencies[cand], jnp.inf)
            k = jnp.argmin(totals)
            return best.at[b + 1].set(totals[k]), cand[k]

        best0 = jnp.zeros((count + 1,), latencies.dtype)
        best, choice = jax.lax.scan(step, best0, (jnp.arange(count), jnp.asarray(ids), jnp.asarray(mask),
                                                  jnp.asarray(from_pos)))
        choice_arr = jnp.concatenate([jnp.zeros(1, jnp.int32), choice])
        starts = jnp.asarray(self.candidate_start)

        def back(_, state):
            pos, covering = state
            c = choice_arr[pos]
            a = starts[c]
            layer = jnp.arange(count)
            covering = jnp.where((pos > 0) & (layer >= a) & (layer < pos), c, covering)
            return jnp.where(pos > 0, a, pos), covering

        _, covering = jax.lax.fori_loop(0, count, back, (jnp.asarray(count, jnp.int32),
                                                          jnp.zeros(count, jnp.int32)))
        return best[count], covering

    def best_plan(self, cluster: Cluster, share: jax.Array, rule: str = "closed_form") -> PlanResult:
        """The best plan (MODEL.md section 7) with ``rule`` inside every segment: the shortest path
        over the exact latencies of every candidate's split."""
        splits = self.candidate_splits(cluster, share, rule)
        lat = self.candidate_latencies(cluster, share, splits, self._last_run_latency)
        lat = jnp.where(self._allowed(rule), lat, jnp.inf)
        latency, covering = self._shortest_path(lat)
        return PlanResult(latency, covering, splits, lat)

    def layer_plan(self, cluster: Cluster, share: jax.Array, rule: str = "closed_form") -> PlanResult:
        """The per-layer plan of section 3 with one of :mod:`jaxsplit.solvers`' rules."""
        count = self.num_layers
        single = solvers.get_solver(rule)
        rows = jax.vmap(single, in_axes=(0, None, None))(self.layer_arrays, cluster, share).astype(jnp.int32)
        splits = jnp.concatenate([rows, jnp.zeros((count + self.num_runs, rows.shape[1]), jnp.int32)])
        rates = allocation_rates(cluster, share)
        per_layer = jnp.max(self.row_times(rates, rows.T), axis=0)
        lat = jnp.concatenate([per_layer, jnp.full(count + self.num_runs, jnp.inf, per_layer.dtype)])
        return PlanResult(jnp.sum(per_layer), jnp.arange(count, dtype=jnp.int32), splits, lat)

    def aofl_plan(self, cluster: Cluster, share: jax.Array) -> PlanResult:
        """AOFL-style: fusion points by dynamic programming, rows proportional to compute capacity."""
        return self.best_plan(cluster, share, "proportional")

    def deepthings_plan(self, cluster: Cluster, share: jax.Array) -> PlanResult:
        """DeepThings-style fused tile partitioning: the first layers up to a cut fused (the best
        such cut), equal rows over the active devices, the rest per layer with equal rows."""
        splits = self.candidate_splits(cluster, share, "equal")
        lat = self.candidate_latencies(cluster, share, splits)
        count = self.num_layers
        singles = lat[:count]
        tail = jnp.concatenate([jnp.cumsum(singles[::-1])[::-1], jnp.zeros(1, singles.dtype)])  # tail[p]: layers p..
        prefix_ids = [c for c in range(2 * count, self.num_candidates) if self.candidate_start[c] == 0]
        options = [tail[0]] + [lat[c] + tail[int(self.candidate_end[c])] for c in prefix_ids]
        totals = jnp.stack(options)
        k = jnp.argmin(totals)
        layer = jnp.arange(count)
        covering = layer.astype(jnp.int32)
        if prefix_ids:
            ids = jnp.asarray([0] + prefix_ids, jnp.int32)
            ends = jnp.asarray([0] + [int(self.candidate_end[c]) for c in prefix_ids], jnp.int32)
            covering = jnp.where((k > 0) & (layer < ends[k]), ids[k], covering)
        allowed = np.zeros(self.num_candidates, bool)
        allowed[:count] = True
        allowed[prefix_ids] = True
        return PlanResult(totals[k], covering, splits, jnp.where(allowed, lat, jnp.inf))

    def plan(self, name: str, cluster: Cluster, share: jax.Array, rule: str = "closed_form") -> PlanResult:
        """Plan ``name`` (:data:`PLANS`): ``layer`` and ``fused`` with ``rule``, the peers' with theirs."""
        if name == "layer":
            return self.layer_plan(cluster, share, rule)
        if name == "fused":
            return self.best_plan(cluster, share, rule)
        if name == "aofl":
            return self.aofl_plan(cluster, share)
        if name == "deepthings":
            return self.deepthings_plan(cluster, share)
        raise ValueError(f"field 'plan': unknown plan {name!r}; known: {', '.join(PLANS)}")

    def plan_latency(self, segments: Sequence[tuple[int, int, str, Sequence[int]]], cluster: Cluster,
                     share: jax.Array) -> jax.Array:
        """Latency (s) of a plan given as ``(first, end, partition, split)`` segments (MODEL.md section
        7), evaluated by the same exact formulas; ValueError for a segment that is no candidate."""
        index = {(int(a), int(b), int(k)): c for c, (a, b, k) in
                 enumerate(zip(self.candidate_start, self.candidate_end, self.candidate_kind))}
        num = share.shape[0]
        splits = np.zeros((self.num_candidates, num), np.int32)
        chosen = []
        for a, b, partition, split in segments:
            kind = CHANNELS if partition == "channels" else (ROWS if b - a == 1 else FUSED)
            if (a, b, kind) not in index:
                raise ValueError(f"field 'segments': [{a}, {b}] with partition {partition!r} is not a segment of "
                                 f"this model's plans")
            c = index[(a, b, kind)]
            splits[c] = split
            chosen.append(c)
        lat = self.candidate_latencies(cluster, share, jnp.asarray(splits))
        return jnp.sum(lat[np.asarray(chosen)])
