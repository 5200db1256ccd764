"""What a request's execution time E and its reference E_ref are under the environment's planner.

"layer" (MODEL.md section 3): E is the per-layer closed form of the request's model under its
shares, E_ref the same with share 1 on every device of the episode. "fused" (section 7): the
episode's best plan of each model is tabled at its start (:class:`~jaxsplit.plan_engine.CataloguePlans`)
and E is the better of the per-layer closed form and that plan split under the shares; the offered
load stays relative to the per-layer E_ref, so one rho is one arrival rate under either planner.

The next episode's references are prepared a chunk per step (its cluster is drawn one episode
ahead), so that an auto-reset costs no more than a step.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxsplit.catalogue import RequestLatency
from jaxsplit.latency import Cluster
from jaxsplit.plan_engine import CataloguePlans


class EpisodeReferences(NamedTuple):
    """The references an episode starts with.

    e_ref: (K,) E_ref(k) (s) under the planner; plan: (K, W) int32 the fused plan of each model
    ((K, 1) zeros with "layer"); e_layer: (K,) the per-layer E_ref that sets the arrival rate, or
    None where it is ``e_ref``."""

    e_ref: jax.Array
    plan: jax.Array | None
    e_layer: jax.Array | None


class RequestTimes:
    """E and E_ref of an environment's requests under its planner, and the next episode's
    references accumulated a chunk per step.

    engine: the request latency engine; planner: "layer" or "fused"; requests: steps per episode
    (the chunks are sized so that the next episode's references are complete after that many)."""

    def __init__(self, engine: RequestLatency, planner: str, requests: int):
        self.engine = engine
        #: the catalogue's fused plans (planner "fused"), else None
        self.plans: CataloguePlans | None = None
        if planner == "fused":
            if engine.split != "closed_form":
                raise ValueError(f"field 'planner': the fused planner splits by the closed form; split "
                                 f"{engine.split!r} goes with planner 'layer'")
            self.plans = CataloguePlans(engine.models, engine.input_size, engine.bytes_per_element, engine.dtype)
            #: candidates of the next episode's plans solved per step
            self.plan_chunk = int(math.ceil(self.plans.num_candidates / requests))
        #: reference layers solved per step for the next episode's E_ref
        self.ref_chunk = int(math.ceil(engine.num_flat / requests))

    def blank(self) -> dict[str, Any]:
        """The next-episode accumulators at the start of an episode: ``next_e_ref`` (K,),
        ``next_cand`` (G,) and ``next_e_layer`` (K,) zeros ((1,) where the planner has none)."""
        k, dtype = self.engine.num_models, self.engine.dtype
        return dict(next_e_ref=jnp.zeros((k,), dtype),
                    next_cand=jnp.zeros((self.plans.num_candidates if self.plans else 1,), dtype),
                    next_e_layer=jnp.zeros((k if self.plans else 1,), dtype))

    def first(self, cluster: Cluster, pool: jax.Array) -> EpisodeReferences:
        """The references of an episode on ``cluster`` with the devices ``pool`` ((N,) bool), all at once."""
        share = pool.astype(self.engine.dtype)
        e_layer = self.engine.reference_times(cluster, share)
        if self.plans is None:
            return EpisodeReferences(e_layer, None, None)
        lat = self.plans.latencies(jnp.arange(self.plans.num_candidates), cluster, share)
        plan, e_ref = self.plans.tabulate(lat)
        return EpisodeReferences(e_ref, plan, e_layer)

    def accumulate(self, state: Any) -> tuple[dict[str, jax.Array], EpisodeReferences]:
        """One step's chunk of the next episode's references (``state.next_cluster`` and
        ``state.next_pool``, step ``state.count``): the updated accumulators (as :meth:`blank`) and
        the references they give so far (complete after ``requests`` steps)."""
        share = state.next_pool.astype(self.engine.dtype)
        layer = self.engine.reference_chunk(state.next_cluster, state.count, self.ref_chunk, share)
        if self.plans is None:
            acc = dict(next_e_ref=state.next_e_ref + layer, next_cand=state.next_cand,
                       next_e_layer=state.next_e_layer)
            return acc, EpisodeReferences(acc["next_e_ref"], None, None)
        ids, lat = self.plans.candidate_chunk(state.next_cluster, share, state.count, self.plan_chunk)
        next_cand = state.next_cand.at[ids].set(lat)
        plan, e_ref = self.plans.tabulate(next_cand)
        acc = dict(next_e_ref=e_ref, next_cand=next_cand, next_e_layer=state.next_e_layer + layer)
        return acc, EpisodeReferences(e_ref, plan, acc["next_e_layer"])

    def request_time(self, state: Any, share: jax.Array) -> jax.Array:
        """E (s) of the present request (``state.model``) under ``share`` (N,)."""
        e = self.engine.exec_time(state.cluster, share, state.model)
        if self.plans is not None:
            e = jnp.minimum(e, self.plans.plan_time(state.plan[state.model], state.cluster, share))
        return e
