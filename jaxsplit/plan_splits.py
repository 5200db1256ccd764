"""Split rules inside the segments of a plan (MODEL.md section 7): the closed forms of fused runs and
of channel splits, the exact integer splits, and the peers' equal and proportional rows.

The closed forms are module functions of a planner's tables; :class:`SegmentSplits` is the part of
:class:`~jaxsplit.planner.Planner` that splits every candidate segment of one instance under a rule.
Units: seconds, bytes, FLOP, FLOP/s, bytes/s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import solvers
from .latency import Cluster, Rates, allocation_rates

#: Split rules inside a segment of a fused plan.
SEGMENT_RULES = ("closed_form", "exact", "proportional", "equal")


def run_affine(runs: dict, rates: Rates, border: str) -> tuple[jax.Array, jax.Array]:
    """alpha (N, S) s and beta (N, S) s/row of fused runs' affine model for an interior device, or
    the ``first`` or ``last`` one (MODEL.md section 7); ``runs`` fields (S,), ``rates`` (N,)."""
    rates = jax.tree.map(lambda x: jnp.reshape(x, (x.shape[0], 1)), rates)
    in_bytes, out_bytes = runs["in_bytes"], runs["out_bytes"]
    h = {"interior": runs["in_h"], "first": runs["in_h_first"], "last": runs["in_h_last"]}[border]
    w0 = {"interior": runs["w0"], "first": runs["w0_first"], "last": runs["w0_last"]}[border]
    beta = (runs["in_s"] * in_bytes + out_bytes) * rates.sec_per_byte + runs["w1"] * rates.sec_per_flop
    alpha = rates.message + h * in_bytes * rates.sec_per_byte + w0 * rates.sec_per_flop
    return alpha, beta


def runs_closed_form(runs: dict, times, rates: Rates) -> tuple[jax.Array, jax.Array]:
    """Closed-form rows (N, S) of fused runs and their exact latencies (S,): water-fill the interior
    model, again with the border intercepts of the first and last active devices, round, and keep
    whichever of the two roundings is faster exactly. ``times(rates, start, rows) -> (N, S)``."""
    count = runs["out_height"].shape[-1]
    active = jnp.broadcast_to(rates.active[:, None], (rates.active.shape[0], count))
    total = runs["out_height"]
    alpha, beta = run_affine(runs, rates, "interior")
    _, n_plain = solvers.water_fill(alpha, beta, active, total)
    first, last = solvers._border_flags(n_plain > 0)
    a_first, _ = run_affine(runs, rates, "first")
    a_last, _ = run_affine(runs, rates, "last")
    alpha_b = jnp.where(first, a_first, jnp.where(last, a_last, alpha))
    _, n = solvers.water_fill(alpha_b, beta, active, total)
    rows = solvers.round_split(n, alpha_b, beta, active, total)
    plain = solvers.round_split(n_plain, alpha, beta, active, total)

    def latency(r):
        return jnp.max(times(rates, jnp.cumsum(r, axis=0) - r, r), axis=0)

    lat_rows, lat_plain = latency(rows), latency(plain)
    better = lat_rows <= lat_plain
    return jnp.where(better, rows, plain), jnp.where(better, lat_rows, lat_plain)


def channels_closed_form(ch: dict, rates: Rates) -> tuple[jax.Array, jax.Array]:
    """Closed-form channel splits (N, L) (water-filled and rounded) and the affine model's alpha,
    beta (N, L); ``ch`` fields (L,), ``rates`` (N,)."""
    r = jax.tree.map(lambda x: x[:, None], rates)
    alpha = r.message + ch["in_bytes"] * r.sec_per_byte
    beta = ch["out_bytes"] * r.sec_per_byte + ch["work"] * r.sec_per_flop
    active = jnp.broadcast_to(rates.active[:, None], alpha.shape)
    _, n = solvers.water_fill(alpha, beta, active, ch["total"])
    return solvers.round_split(n, alpha, beta, active, ch["total"]), (alpha, beta, active)


def channel_times(ch: dict, rates: Rates, channels: jax.Array) -> jax.Array:
    """T_i of every device on layers split by output channels (MODEL.md section 7), seconds, (N, L);
    ``2 tau + (H W C_in q + c H_out W_out q)/b + c phi_c/f``; ``channels`` (N, L) int."""
    rates = jax.tree.map(lambda x: jnp.reshape(x, (x.shape[0], 1)), rates)
    c = channels.astype(rates.sec_per_flop.dtype)
    t = (rates.message + (ch["in_bytes"] + c * ch["out_bytes"]) * rates.sec_per_byte
         + c * ch["work"] * rates.sec_per_flop)
    return jnp.where(c > 0, t, 0.0)


class SegmentSplits:
    """Every candidate segment's split under a rule: the split-rule part of
    :class:`~jaxsplit.planner.Planner`, reading its tables (``arrays``, ``layer_arrays``, ``num_layers``,
    ``num_runs``, ``dtype``, ``_row_steps``) and exact times (``run_times``, ``channel_times``)."""

    def _runs_closed_form(self, cluster: Cluster, share: jax.Array) -> jax.Array:
        """Closed-form rows (N, S) of every fused run (:func:`runs_closed_form`)."""
        rows, self._last_run_latency = runs_closed_form(self.arrays.runs, self.run_times,
                                                        allocation_rates(cluster, share))
        return rows

    def _runs_exact(self, cluster: Cluster, share: jax.Array, upper_rows: jax.Array) -> jax.Array:
        """Exact rows (N, S) of every fused run: bisection on the bit pattern of the latency bound
        with a greedy pass (each device in order takes the most rows that fit, found by bisection on
        the row count). ``upper_rows`` (N, S) is a feasible split (the closed form's)."""
        rates = allocation_rates(cluster, share)
        dt = self.dtype
        ibits = jnp.int64 if dt == jnp.float64 else jnp.int32
        steps = 63 if dt == jnp.float64 else 31
        total = self.arrays.runs["out_height"].astype(jnp.int32)
        row_steps = self._row_steps
        num = share.shape[0]

        def lat_of(rows):
            return jnp.max(self.run_times(rates, jnp.cumsum(rows, axis=0) - rows, rows), axis=0)

        def greedy(budget):
            def take(start, one):
                one_rates = jax.tree.map(lambda x: x[None], one)
                cap = total - start

                def probe(_, bounds):
                    lo, hi = bounds  # lo fits, hi + 1 may not; find the most rows that fit
                    mid = (lo + hi + 1) // 2
                    fits = self.run_times(one_rates, start[None], mid[None])[0] <= budget
                    fits = fits & one.active
                    return jnp.where(fits, mid, lo), jnp.where(fits, hi, mid - 1)

                lo, _ = jax.lax.fori_loop(0, row_steps, probe, (jnp.zeros_like(cap), cap))
                return start + lo, lo

            end, rows = jax.lax.scan(take, jnp.zeros_like(total), rates)
            return end >= total, rows

        upper = lat_of(upper_rows)
        hi = jax.lax.bitcast_convert_type(upper, ibits) + 64
        lo = jnp.zeros_like(hi)

        def body(_, bounds):
            lo, hi = bounds
            mid = lo + (hi - lo) // 2
            feasible, _ = greedy(jax.lax.bitcast_convert_type(mid, dt))
            return jnp.where(feasible, lo, mid), jnp.where(feasible, mid, hi)

        lo, hi = jax.lax.fori_loop(0, steps, body, (lo, hi))
        feasible, rows = greedy(jax.lax.bitcast_convert_type(hi, dt))
        better = feasible & (lat_of(rows) <= upper)
        del num
        return jnp.where(better, rows, upper_rows)

    def _runs_simple(self, cluster: Cluster, share: jax.Array, rule: str) -> jax.Array:
        """Equal or compute-proportional rows (N, S) of every fused run (the peers' rules)."""
        total = self.arrays.runs["out_height"]

        def one(h):
            layer = jax.tree.map(lambda x: x[0], self.layer_arrays).replace(out_height=h)
            fn = solvers.equal_split if rule == "equal" else solvers.proportional_split
            return fn(layer, cluster, share)

        return jax.vmap(one)(total).T

    def _channels(self, cluster: Cluster, share: jax.Array, exact: bool) -> jax.Array:
        """Channel splits (N, L): the affine closed form (water-filled and rounded), or the exact
        integer optimum (bisection on the latency; each device's most channels within a bound is a
        floor of an affine inequality)."""
        rates = allocation_rates(cluster, share)
        chans, (alpha, beta, active) = channels_closed_form(self.arrays.ch, rates)
        total = self.arrays.ch["total"]
        if not exact:
            return chans
        dt = self.dtype
        ibits = jnp.int64 if dt == jnp.float64 else jnp.int32
        steps = 63 if dt == jnp.float64 else 31
        upper = jnp.max(self.channel_times(rates, chans), axis=0)
        total_i = total.astype(jnp.int32)
        safe_beta = jnp.where(active, beta, 1.0)

        def most(budget):
            c = jnp.floor((budget - alpha) / safe_beta)
            c = jnp.clip(jnp.where(active, c, 0.0), 0.0, total)
            # float round-off: one down if over the budget, one up if the next still fits
            t = self.channel_times(rates, c.astype(jnp.int32))
            c = jnp.where((t > budget) & (c > 0), c - 1.0, c)
            t_next = self.channel_times(rates, (c + 1.0).astype(jnp.int32))
            c = jnp.where((t_next <= budget) & (c + 1.0 <= total) & active, c + 1.0, c)
            return c.astype(jnp.int32)

        hi = jax.lax.bitcast_convert_type(upper, ibits) + 64
        lo = jnp.zeros_like(hi)

        def body(_, bounds):
            lo, hi = bounds
            mid = lo + (hi - lo) // 2
            feasible = jnp.sum(most(jax.lax.bitcast_convert_type(mid, dt)), axis=0) >= total_i
            return jnp.where(feasible, lo, mid), jnp.where(feasible, mid, hi)

        lo, hi = jax.lax.fori_loop(0, steps, body, (lo, hi))
        got = most(jax.lax.bitcast_convert_type(hi, dt))
        # trim the surplus from the last devices: fewer channels never makes a device slower
        ends = jnp.minimum(jnp.cumsum(got, axis=0), total_i)
        got = ends - jnp.concatenate([jnp.zeros_like(ends[:1]), ends[:-1]])
        ok = (jnp.sum(got, axis=0) == total_i) & (jnp.max(self.channel_times(rates, got), axis=0) <= upper)
        return jnp.where(ok, got, chans)

    def candidate_splits(self, cluster: Cluster, share: jax.Array, rule: str = "closed_form") -> jax.Array:
        """Every candidate's split under ``rule`` (:data:`SEGMENT_RULES`); int32 (C, N)."""
        if rule not in SEGMENT_RULES:
            raise ValueError(f"field 'solver': {rule!r} does not split a fused segment; known: {', '.join(SEGMENT_RULES)}")
        single = {"closed_form": solvers.closed_form_split, "exact": solvers.exact_split,
                  "proportional": solvers.proportional_split, "equal": solvers.equal_split}[rule]
        rows = jax.vmap(single, in_axes=(0, None, None))(self.layer_arrays, cluster, share)  # (L, N)
        if rule in ("closed_form", "exact"):
            chans = self._channels(cluster, share, rule == "exact").T
        else:
            chans = jnp.zeros_like(rows)
        parts = [rows, chans]
        self._last_run_latency = None  # the runs' exact latencies where the rule already computed them
        if self.num_runs:
            if rule in ("closed_form", "exact"):
                runs = self._runs_closed_form(cluster, share)
                if rule == "exact":
                    self._last_run_latency = None
                    runs = self._runs_exact(cluster, share, runs)
            else:
                runs = self._runs_simple(cluster, share, rule)
            parts.append(runs.T)
        return jnp.concatenate(parts).astype(jnp.int32)

    def _allowed(self, rule: str) -> jax.Array:
        """(C,) the candidates a rule may use: channel splits only where a layer allows them and the
        rule has a channel form."""
        count = self.num_layers
        chans = self.arrays.channel_ok & (rule in ("closed_form", "exact"))
        return jnp.concatenate([jnp.ones(count, bool), chans, jnp.ones(self.num_runs, bool)])
