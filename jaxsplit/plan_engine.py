"""Fused plans of a model catalogue for the allocation environment (MODEL.md sections 6 and 7).

With ``planner="fused"`` the execution time E of a request is the latency of a plan of fused segments
and channel splits (:mod:`jaxsplit.planner`) under the request's shares. Finding the best plan means
solving every candidate segment of the model (about 175 for VGG-16) and a shortest path; doing so
for every request (and every candidate allocation a lookahead policy tries) would cost hundreds of
times the per-layer closed form. :class:`CataloguePlans` splits the work the way the environment
already does for E_ref:

* per episode, the best *segmentation* of every model for the episode's cluster under shares 1 on
  its devices (the reference allocation): every candidate of every model is solved a chunk per step
  during the previous episode (:meth:`candidate_chunk`) and the shortest paths are taken when the
  episode starts (:meth:`tabulate`), which also gives E_ref(k) = that plan's latency;
* per request, the segments of that segmentation are split again under the request's own shares
  by the closed form and evaluated exactly (:meth:`plan_time`); E is the better of that plan and
  the per-layer closed form under the same shares (so the fused planner is never slower than the
  per-layer one, request by request).

Every E is the exact latency of a real plan; when the request's shares differ from the reference
allocation, the episode's segmentation may not be the best one for them (RESULTS.md "Plans in the
environment" measures how close it stays to the best plan for the request's shares).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import models as model_specs
from . import solvers
from .latency import LAYER_FIELDS, Cluster, LayerArrays, allocation_rates
from .planner import CHANNELS, FUSED, ROWS, Planner, channel_times, channels_closed_form, fused_run_times, \
    runs_closed_form

_RUN_FIELDS = ("in_bytes", "out_bytes", "out_height", "in_s", "in_h", "in_h_first", "in_h_last", "w1", "w0",
               "w0_first", "w0_last")


class CataloguePlans:
    """Every model's candidate segments as one flat table of G candidates (static shapes).

    Args:
      models: model specs (:mod:`jaxsplit.models`); input_size: (H, W) for specs without a size;
      bytes_per_element: q; dtype: float dtype.

    Attributes: ``planners`` (one :class:`~jaxsplit.planner.Planner` per model), ``num_candidates``
    G, ``width`` (the longest model's layer count: a plan is stored as the candidate covering each
    layer, (K, width), -1 past the model's end).
    """

    def __init__(self, models: Sequence[str], input_size: tuple[int, int], bytes_per_element: float, dtype) -> None:
        self.dtype = dtype
        self.planners = [Planner(model_specs.resolve(m, input_size), bytes_per_element, dtype) for m in models]
        self.num_models = len(self.planners)
        self.width = max(p.num_layers for p in self.planners)
        #: the most fused runs one plan can hold (each has two or more layers)
        self.most_runs = max(1, max(p.num_layers // 2 for p in self.planners))
        depth = max(p._depth_max for p in self.planners)
        self.slots = max(p._slots for p in self.planners)
        fan = max(p._fan for p in self.planners)
        self.offsets = np.cumsum([0] + [p.num_candidates for p in self.planners])
        self.num_candidates = int(self.offsets[-1])
        kind, model, layer_of, run_of = [], [], [], []
        for k, p in enumerate(self.planners):
            kind.append(p.candidate_kind)
            model.append(np.full(p.num_candidates, k))
            layer_of.append(np.where(p.candidate_kind == FUSED, 0, p.candidate_start))
            run_of.append(np.where(p.candidate_kind == FUSED, np.arange(p.num_candidates) - 2 * p.num_layers, -1))
        self.kind = np.concatenate(kind).astype(np.int32)
        self.model = np.concatenate(model).astype(np.int32)
        layer_of, run_of = np.concatenate(layer_of), np.concatenate(run_of)

        def column(values_of_model) -> np.ndarray:
            return np.concatenate([values_of_model(k, p) for k, p in enumerate(self.planners)])

        lay = {f: column(lambda k, p, f=f: p._np[f][layer_of[self.offsets[k]:self.offsets[k + 1]]])
               for f in LAYER_FIELDS}
        ch = {f: column(lambda k, p, f=f: p._ch[f][layer_of[self.offsets[k]:self.offsets[k + 1]]])
              for f in ("in_bytes", "out_bytes", "work", "total")}
        ok = column(lambda k, p: np.where(p.candidate_kind == CHANNELS, np.concatenate(
            [p.channel_ok_host, p.channel_ok_host, np.zeros(p.num_runs, bool)]), True))
        tables = [p.run_table(depth, self.slots, fan) for p in self.planners]

        def run_column(k: int, values: np.ndarray, filler) -> np.ndarray:
            """``values`` (..., S_k) of model k's runs laid on its candidates (filler elsewhere)."""
            idx = run_of[self.offsets[k]:self.offsets[k + 1]]
            out = np.full(values.shape[:-1] + (len(idx),), filler, values.dtype)
            out[..., idx >= 0] = values[..., idx[idx >= 0]]
            return out

        runs = {f: np.concatenate([run_column(k, p._runs[f], 1.0) for k, p in enumerate(self.planners)])
                for f in _RUN_FIELDS}
        table = {"geo": {g: np.concatenate([run_column(k, t["geo"][g], 1.0 if g == "stride" else 0.0)
                                            for k, t in enumerate(tables)], axis=-1) for g in tables[0]["geo"]}}
        for name, filler in (("valid", False), ("read", 0), ("writes", -1), ("reads_in", False), ("init", False),
                             ("before", False)):
            table[name] = np.concatenate([run_column(k, t[name], filler) for k, t in enumerate(tables)], axis=-1)
        const = lambda a: jnp.asarray(a, dtype)  # noqa: E731
        self._layers = {f: const(v) for f, v in lay.items()}
        self._ch = {f: const(v) for f, v in ch.items()}
        self._ok = jnp.asarray(ok)
        self._runs = {f: const(v) for f, v in runs.items()}
        self._table = {"geo": {g: const(v) for g, v in table["geo"].items()},
                       **{k: jnp.asarray(v) for k, v in table.items() if k != "geo"}}

    # ------------------------------------------------------------------ candidates
    def latencies(self, ids: jax.Array, cluster: Cluster, share: jax.Array) -> jax.Array:
        """Exact latency (s) of candidates ``ids`` (P,) int, each split by the closed form under
        ``share`` (N,) on ``cluster`` (fields (N,)); ``inf`` for a channel split a layer does not
        allow. Returns (P,)."""
        kind = jnp.asarray(self.kind)[jnp.clip(ids, 0, self.num_candidates - 1)]
        return jnp.where(kind == FUSED, self._run_latencies(ids, cluster, share),
                         self._single_latencies(ids, cluster, share))

    def _single_latencies(self, ids: jax.Array, cluster: Cluster, share: jax.Array) -> jax.Array:
        """:meth:`latencies` of one-layer candidates (rows or channels); meaningless for runs."""
        ids = jnp.clip(ids, 0, self.num_candidates - 1)
        take = lambda a: a[..., ids]  # noqa: E731
        rates = allocation_rates(cluster, share)
        count = ids.shape[0]
        layer = LayerArrays(**{f: take(v) for f, v in self._layers.items()})
        wide = jax.tree.map(lambda x: jnp.broadcast_to(x[:, None], (x.shape[0], count)), cluster)
        rows = solvers.closed_form_split(layer, wide, jnp.broadcast_to(share[:, None], (share.shape[0], count)))
        lat_rows = jnp.max(solvers.device_times_major(layer, jax.tree.map(lambda x: x[:, None], rates), rows), axis=0)
        ch = {f: take(v) for f, v in self._ch.items()}
        chans, _ = channels_closed_form(ch, rates)
        lat_ch = jnp.max(channel_times(ch, rates, chans), axis=0)
        lat = jnp.where(jnp.asarray(self.kind)[ids] == ROWS, lat_rows, lat_ch)
        return jnp.where(self._ok[ids], lat, jnp.inf)

    def _run_latencies(self, ids: jax.Array, cluster: Cluster, share: jax.Array) -> jax.Array:
        """:meth:`latencies` of fused-run candidates; meaningless for one-layer candidates."""
        ids = jnp.clip(ids, 0, self.num_candidates - 1)
        take = lambda a: a[..., ids]  # noqa: E731
        rates = allocation_rates(cluster, share)
        runs = {f: take(v) for f, v in self._runs.items()}
        table = {"geo": {g: take(v) for g, v in self._table["geo"].items()},
                 **{k: take(v) for k, v in self._table.items() if k != "geo"},
                 "in_bytes": runs["in_bytes"], "out_bytes": runs["out_bytes"]}
        _, lat = runs_closed_form(runs, lambda r, s, n: fused_run_times(table, self.slots, r, s, n), rates)
        return lat

    def candidate_chunk(self, cluster: Cluster, share: jax.Array, count: jax.Array, chunk: int) -> jax.Array:
        """Latencies of candidates ``count * chunk`` to ``(count + 1) * chunk - 1`` (those past G
        repeat the last), as ``(ids (chunk,), latencies (chunk,))`` for accumulating a table (G,)."""
        ids = jnp.minimum(count * chunk + jnp.arange(chunk), self.num_candidates - 1)
        return ids, self.latencies(ids, cluster, share)

    def tabulate(self, latencies: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The best segmentation of every model from its candidates' latencies (G,): ``(plan (K,
        width) int32, the candidate covering each layer, -1 past the model's end; latency (K,) s)``."""
        plans, best = [], []
        for k, p in enumerate(self.planners):
            lat_k = latencies[self.offsets[k]:self.offsets[k + 1]]
            total, covering = p._shortest_path(lat_k)
            plans.append(jnp.concatenate([covering + int(self.offsets[k]),
                                          jnp.full(self.width - p.num_layers, -1, jnp.int32)]))
            best.append(total)
        return jnp.stack(plans), jnp.stack(best)

    def plan_time(self, plan: jax.Array, cluster: Cluster, share: jax.Array) -> jax.Array:
        """Latency (s) of a tabled plan (width,) (the candidate covering each layer) with each of its
        segments split again by the closed form under ``share`` (N,). Its fused runs (at most
        :attr:`most_runs`) are gathered first, so the scan over their depth runs on few columns."""
        first = jnp.concatenate([jnp.ones(1, bool), plan[1:] != plan[:-1]]) & (plan >= 0)
        is_run = first & (jnp.asarray(self.kind)[jnp.maximum(plan, 0)] == FUSED)
        single = jnp.where(first & ~is_run, self._single_latencies(plan, cluster, share), 0.0)
        order = jnp.argsort(~is_run, stable=True)[: self.most_runs]
        runs = jnp.where(is_run[order], self._run_latencies(plan[order], cluster, share), 0.0)
        return jnp.sum(single) + jnp.sum(runs)
