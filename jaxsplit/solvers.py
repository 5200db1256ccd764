"""Split solvers: rows per device for one layer under an allocation (MODEL.md section 4).

Every solver has the signature ``solver(layer, cluster, share) -> rows`` for one instance (layer
fields scalar, cluster fields and ``share`` of shape (N,)) and returns int32 rows of shape (N,) that
are non-negative, sum exactly to H_out and are 0 where the share is 0. All but ``lp`` are pure JAX:
jit them and vmap them over batches (:func:`solve_batch` does both).

* ``closed_form``: the paper's level 1. Equal finish time under the affine model
  T_i(n) = alpha_i + beta_i n, water-filled over the active set without sorting, rounded so that the
  rows sum exactly, then refined (border-aware intercepts and a bounded exact correction). It is
  written device-major (device axis first, any batch axes after it): :func:`solve_batch` runs it
  with the batch as the minor, vectorised axis and gives the same rows as one call per instance.
* ``exact``: the integer optimum of the exact model for the fixed device order, by bisection on the
  latency's float bit pattern with a greedy feasibility pass.
* baselines: ``single``, ``equal``, ``proportional``, ``rebalance`` (EdgeLD-style) and ``lp``
  (CoEdge-style LP relaxation on the host with scipy's HiGHS).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import contract, kernels
from .latency import LAYER_FIELDS, Cluster, LayerArrays, Rates, allocation_rates, device_times, segment_time

Solver = Callable[[LayerArrays, Cluster, jax.Array], jax.Array]

#: Correction rounds of the closed form (each moves at most one row; bounded, jittable).
CLOSED_FORM_CORRECTION_ROUNDS = 3
#: Largest ratio of two devices' row costs that the LP baseline passes to HiGHS.
LP_COST_SPREAD = 1e12
#: Largest cluster whose devices the exact solver's greedy pass unrolls (larger ones loop).
GREEDY_UNROLL = 8


# --------------------------------------------------------------------------- the affine model
# The closed form works on device-major arrays: the device axis is axis 0 and any further axes are
# batch axes, e.g. (N,) for one instance, (N, L) for every layer of a request, (N, B) for a batch.
# Reductions over devices then run over the major axis, so XLA vectorises them along the batch
# (minor) axis; with the device axis last (what ``vmap`` over instances gives) a reduction over
# N = 8 values is one short, poorly vectorised row per instance.
def affine_model(layer: LayerArrays, rates: Rates) -> tuple[jax.Array, jax.Array]:
    """Interior-halo affine model T_i(n) = alpha_i + beta_i n of MODEL.md section 4; seconds.

    ``beta_i = (sh W C_in q + W_out C_out q)/b_i + phi/f_i``,
    ``alpha_i = 2 tau_i + max(keff_h - sh, 0) W C_in q / b_i``. Shapes: rates (N, ...), layer
    fields broadcastable to them (scalars for one instance); returns two arrays of the rates' shape.
    """
    in_row = layer.in_row_bytes * rates.sec_per_byte
    beta = layer.stride * in_row + layer.out_row_bytes * rates.sec_per_byte + layer.row_work * rates.sec_per_flop
    alpha = rates.message + jnp.maximum(layer.kernel_extent - layer.stride, 0.0) * in_row
    return alpha, beta


def _device_index(x: jax.Array) -> jax.Array:
    """Device numbers 0..N-1 shaped (N, 1, ..., 1) to broadcast against a device-major ``x``."""
    return jnp.arange(x.shape[0]).reshape((-1,) + (1,) * (x.ndim - 1))


def _first_argmin(x: jax.Array) -> jax.Array:
    """``jnp.argmin(x, axis=0)`` (first minimum; the first NaN if any) as two plain reductions."""
    low = jnp.min(x, axis=0)
    hit = jnp.where(jnp.isnan(low), jnp.isnan(x), x == low)
    return jnp.min(jnp.where(hit, _device_index(x), x.shape[0]), axis=0)


def _first_argmax(x: jax.Array) -> jax.Array:
    """``jnp.argmax(x, axis=0)`` (first maximum; the first NaN if any) as two plain reductions."""
    high = jnp.max(x, axis=0)
    hit = jnp.where(jnp.isnan(high), jnp.isnan(x), x == high)
    return jnp.min(jnp.where(hit, _device_index(x), x.shape[0]), axis=0)


def device_times_major(layer: LayerArrays, rates: Rates, rows: jax.Array) -> jax.Array:
    """:func:`jaxsplit.latency.device_times` for device-major rows (N, ...) (devices taken in order
    along axis 0; layer fields of shape (...)); seconds, same shape as ``rows``."""
    start = jnp.cumsum(rows, axis=0) - rows
    return segment_time(layer, rates, start, rows)


_device_times = device_times_major


def water_fill(alpha: jax.Array, beta: jax.Array, active: jax.Array, total: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Equal-finish-time continuous split of ``total`` rows (MODEL.md section 4), without a sort.

    Over active set A: ``T* = (H_out + sum_A alpha/beta) / sum_A 1/beta``, ``n_i = (T* - alpha_i)/beta_i``,
    where A is the set of devices with ``alpha_i < T*``. Found by draining: start from every active
    device, compute T, drop the devices with ``alpha >= T``, repeat until nothing drops. Dropping a
    device with ``alpha >= T`` lowers T (it raised it), so T only falls, the set only shrinks (at most N
    passes), and the fixed point is the prefix in increasing alpha that minimises T: the water level.
    Each pass is O(N); the loop stops once no instance of the batch dropped a device (one or two
    passes for most batches).

    Args:
      alpha, beta: (N, ...) seconds and seconds per row (device axis first); beta > 0 where active.
      active: (N, ...) booleans.
      total: H_out, shape (...) (a scalar for one instance).
    Returns:
      (T*, n): the water level (s), shape (...), and the continuous rows (N, ...), 0 where inactive.
    """
    w = jnp.where(active, 1.0 / jnp.where(active, beta, 1.0), 0.0)
    aw = jnp.where(active, alpha * w, 0.0)

    def level_of(inside):
        num = total + jnp.sum(jnp.where(inside, aw, 0.0), axis=0)
        den = jnp.sum(jnp.where(inside, w, 0.0), axis=0)
        return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.inf)

    def more(state):
        _, _, dropped, k = state
        return dropped & (k < alpha.shape[0])

    def drain(state):
        inside, level, _, k = state
        # The device with the smallest alpha always stays (in exact arithmetic alpha_min < T); kept
        # explicitly because a float level may round down onto it (tau far above the row times).
        lowest = jnp.min(jnp.where(inside, alpha, jnp.inf), axis=0)
        keep = inside & ((alpha < level) | (alpha <= lowest))
        return keep, level_of(keep), jnp.any(keep != inside), k + 1

    start = (active, level_of(active), jnp.asarray(True), jnp.zeros((), jnp.int32))
    _, level, _, _ = jax.lax.while_loop(more, drain, start)
    n = jnp.where(active, jnp.maximum(0.0, (level - alpha) * w), 0.0)
    return level, n


def _fix_total(rows: jax.Array, total: jax.Array, active: jax.Array) -> jax.Array:
    """Make int rows (N, ...) sum exactly to ``total`` (a guard against float round-off; normally a no-op).

    Excess is cut from the end (cumulative clip); a deficit goes to the last active device.
    """
    ends = jnp.minimum(jnp.cumsum(rows, axis=0), total)
    rows = ends - jnp.concatenate([jnp.zeros_like(ends[:1]), ends[:-1]])
    deficit = total - jnp.sum(rows, axis=0)
    idx = _device_index(rows)
    last = jnp.max(jnp.where(active, idx, -1), axis=0)
    return rows + jnp.where(idx == last, deficit, 0)


def round_split(n: jax.Array, alpha: jax.Array, beta: jax.Array, active: jax.Array, total: jax.Array) -> jax.Array:
    """Round continuous rows to integers summing to ``total`` (MODEL.md section 4).

    Floor, then give the remaining rows one by one to the device with the smallest
    ``alpha_i + beta_i (n_i + 1)`` (the first such device on ties). The remainder is below the
    number of active devices, so N rounds always suffice; the loop stops early once no instance of
    the batch has rows left to give (the later rounds would change nothing). Shapes: n, alpha,
    beta, active (N, ...); total (...). Returns int32 (N, ...).
    """
    num = n.shape[0]
    rows = jnp.where(active, jnp.floor(n), 0.0).astype(jnp.int32)
    total_i = total.astype(jnp.int32)
    remaining = total_i - jnp.sum(rows, axis=0)
    idx = _device_index(n)

    def more(state):
        _, left, k = state
        return (k < num) & jnp.any(left > 0)

    def give(state):
        rows, left, k = state
        cost = jnp.where(active, alpha + beta * (rows + 1).astype(alpha.dtype), jnp.inf)
        pick = _first_argmin(cost)
        return rows + jnp.where((idx == pick) & (left > 0), 1, 0), left - 1, k + 1

    rows, _, _ = jax.lax.while_loop(more, give, (rows, remaining, jnp.zeros((), jnp.int32)))
    return _fix_total(rows, total_i, active)


# --------------------------------------------------------------------------- closed form
def border_intercepts(layer: LayerArrays, rates: Rates, first: jax.Array, last: jax.Array) -> jax.Array:
    """Exact intercepts alpha_i of T_i(n) = alpha_i + beta_i n, taking the image borders into account.

    An interior segment reads ``(n - 1) sh + keff`` input rows; the first segment (start 0) reads
    ``p_top`` fewer rows; the last reads up to ``H_end = min(H, (H_out - 1) sh - p_top + keff)``.
    ``first`` and ``last`` are (N, ...) booleans marking the devices at the two borders.
    """
    in_row = layer.in_row_bytes * rates.sec_per_byte
    halo = layer.kernel_extent - layer.stride
    h_end = jnp.minimum(layer.in_height, (layer.out_height - 1.0) * layer.stride - layer.pad_top + layer.kernel_extent)
    extra = jnp.where(first, halo - layer.pad_top, halo)
    extra = jnp.where(last, h_end + layer.pad_top - layer.out_height * layer.stride, extra)
    extra = jnp.where(first & last, h_end - layer.out_height * layer.stride, extra)
    return rates.message + extra * in_row


def _border_flags(rows_positive: jax.Array) -> tuple[jax.Array, jax.Array]:
    idx = _device_index(rows_positive)
    first_idx = jnp.min(jnp.where(rows_positive, idx, rows_positive.shape[0]), axis=0)
    last_idx = jnp.max(jnp.where(rows_positive, idx, -1), axis=0)
    return idx == first_idx, idx == last_idx


def closed_form_plain(layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
    """The unrefined closed form of MODEL.md section 4 (interior-halo model, floor + greedy rounding).

    Shapes as :func:`closed_form_split`."""
    rates = allocation_rates(cluster, share)
    alpha, beta = affine_model(layer, rates)
    _, n = water_fill(alpha, beta, rates.active, layer.out_height)
    return round_split(n, alpha, beta, rates.active, layer.out_height)


def closed_form_split(layer: LayerArrays, cluster: Cluster, share: jax.Array,
                      correction_rounds: int = CLOSED_FORM_CORRECTION_ROUNDS) -> jax.Array:
    """Closed-form split with border-aware refinement; int32 rows (N,).

    1. Water-fill under the interior-halo model (MODEL.md section 4) to find the active devices.
    2. Water-fill again with the exact border intercepts for the first and last active devices.
    3. Round: floor, then the remaining rows one by one to the smallest alpha_i + beta_i (n_i + 1).
    4. ``correction_rounds`` times: move one row from the slowest device (exact time) to the device
       whose affine time after one more row is smallest, kept only if the exact latency falls.
    5. Return the plain rule's rows (:func:`closed_form_plain`) instead where they are faster, so the
       result is never worse than the unrefined closed form. Every step has a static size.

    Shapes: one instance has layer fields scalar and cluster fields and ``share`` (N,). The device
    axis is always axis 0: cluster fields and ``share`` of shape (N, ...) with layer fields of
    shape (...) (or broadcastable to it) solve a whole batch at once, rows (N, ...); this
    device-major layout is the fast one for batches (see :func:`solve_batch`).
    """
    rates = allocation_rates(cluster, share)
    alpha, beta = affine_model(layer, rates)
    return _closed_form_affine(layer, rates, alpha, beta, correction_rounds)


def _closed_form_affine(layer: LayerArrays, rates: Rates, alpha: jax.Array, beta: jax.Array,
                        correction_rounds: int) -> jax.Array:
    """Steps 1-5 of :func:`closed_form_split` from the affine model (alpha, beta) (N, ...)."""
    total = layer.out_height
    _, n_plain = water_fill(alpha, beta, rates.active, total)
    first, last = _border_flags(n_plain > 0)
    alpha_b = border_intercepts(layer, rates, first, last)
    _, n = water_fill(alpha_b, beta, rates.active, total)
    rows = round_split(n, alpha_b, beta, rates.active, total)
    rows = correct_split(layer, rates, rows, alpha_b, beta, correction_rounds)
    # Never worse than the plain rule: keep its rows where the refinement lost (rare).
    plain = round_split(n_plain, alpha, beta, rates.active, total)
    # Both latencies are recomputed here (not carried over from the correction): XLA may round the
    # same expression differently in different fusions, and this comparison decides ties.
    better = jnp.max(_device_times(layer, rates, rows), axis=0) <= jnp.max(_device_times(layer, rates, plain), axis=0)
    return jnp.where(better, rows, plain)


def correct_split(layer: LayerArrays, rates: Rates, rows: jax.Array, alpha: jax.Array, beta: jax.Array,
                  rounds: int) -> jax.Array:
    """Bounded local correction: ``rounds`` one-row moves from the slowest device, each kept only if
    it lowers the exact layer latency. Shapes (N, ...), device axis first.

    A rejected move leaves the state as it was, so the next round would propose the same move and
    reject it again: the loop stops early once no instance of the batch moved a row.
    """
    idx = _device_index(rows)
    times = _device_times(layer, rates, rows)
    best = jnp.max(times, axis=0)
    for _ in range(rounds):
        slow = _first_argmax(times)
        cost = jnp.where(rates.active & (idx != slow), alpha + beta * (rows + 1).astype(alpha.dtype), jnp.inf)
        fast = _first_argmin(cost)
        cheapest = jnp.min(cost, axis=0)  # cost[fast]
        slow_rows = jnp.sum(jnp.where(idx == slow, rows, 0), axis=0)  # rows[slow]
        cand = rows - (idx == slow).astype(rows.dtype) + (idx == fast).astype(rows.dtype)
        cand_times = _device_times(layer, rates, cand)
        cand_best = jnp.max(cand_times, axis=0)
        ok = (cand_best < best) & (slow_rows > 0) & jnp.isfinite(cheapest)
        rows = jnp.where(ok, cand, rows)
        times = jnp.where(ok, cand_times, times)
        best = jnp.where(ok, cand_best, best)
    return rows


# --------------------------------------------------------------------------- exact
def max_rows(layer: LayerArrays, rates: Rates, start: jax.Array, budget: jax.Array, cap: jax.Array) -> jax.Array:
    """Most output rows each device can take from ``start`` within ``budget`` seconds; int32 (N,).

    The exact T_i(n) from a fixed start is ``2 tau + max(min(H, hi(n)) - lo, 0) in + n out``: the
    smallest of two affine pieces (bottom unclamped, bottom clamped at H) and never below the piece
    with no input rows, so the largest n solves three affine inequalities; a final check against
    :func:`segment_time` removes float round-off. ``cap`` (N,) bounds the answer (rows left).
    """
    dt = rates.sec_per_flop.dtype
    start = start.astype(dt)
    in_row = layer.in_row_bytes * rates.sec_per_byte
    gamma = layer.out_row_bytes * rates.sec_per_byte + layer.row_work * rates.sec_per_flop
    beta = layer.stride * in_row + gamma
    lo = jnp.maximum(0.0, start * layer.stride - layer.pad_top)
    c1 = (start - 1.0) * layer.stride - layer.pad_top + layer.kernel_extent - lo
    safe_b = jnp.where(rates.active, beta, 1.0)
    safe_g = jnp.where(rates.active, gamma, 1.0)
    n1 = jnp.floor((budget - rates.message - c1 * in_row) / safe_b)
    n2 = jnp.floor((budget - rates.message - (layer.in_height - lo) * in_row) / safe_g)
    n3 = jnp.floor((budget - rates.message) / safe_g)
    capf = cap.astype(dt)
    n = jnp.clip(jnp.minimum(jnp.maximum(n1, n2), n3), 0.0, capf)
    n = jnp.where(rates.active, n, 0.0)
    too_slow = segment_time(layer, rates, start, n) > budget
    n = jnp.where(too_slow & (n > 0), n - 1.0, n)
    fits_more = (segment_time(layer, rates, start, n + 1.0) <= budget) & (n + 1.0 <= capf) & rates.active
    n = jnp.where(fits_more, n + 1.0, n)
    return n.astype(jnp.int32)


def greedy_split(layer: LayerArrays, rates: Rates, budget: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Greedy feasibility pass: each device in order takes as many rows as fit in ``budget``.

    Feasible (some split has latency <= budget) iff the rows cover H_out: a device's time only falls
    when its segment shrinks from the left, so taking the most rows early never hurts later devices.
    Returns (feasible, rows int32 (N,)).
    """
    total = layer.out_height.astype(jnp.int32)
    num = rates.active.shape[-1]

    def take(start, one):
        one = jax.tree.map(lambda a: a[None], one)
        n = max_rows(layer, one, start[None], budget, (total - start)[None])[0]
        return start + n, n

    # A scan, not a Python loop over the devices: the program (and its compile time) stays one loop
    # body whatever N is; clusters of up to GREEDY_UNROLL devices are unrolled (the faster program).
    unroll = num if num <= GREEDY_UNROLL else 1
    start, rows = jax.lax.scan(take, jnp.zeros((), jnp.int32), rates, unroll=unroll)
    return start >= total, rows


def exact_split(layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
    """Integer split minimising the exact layer latency (MODEL.md section 3) for the fixed order.

    Bisection on the bit pattern of the latency bound (positive floats order like their bits): 0 is
    infeasible, the closed form's latency is feasible, and after 31 steps (63 in float64) the two
    bounds are adjacent floats, so the greedy split at the upper bound is optimal. int32 rows (N,).
    """
    rates = allocation_rates(cluster, share)
    dt = rates.sec_per_flop.dtype
    ibits = jnp.int64 if dt == jnp.float64 else jnp.int32
    steps = 63 if dt == jnp.float64 else 31
    start_rows = closed_form_split(layer, cluster, share)
    upper = jnp.max(device_times(layer, rates, start_rows))
    # A few ulps of slack: the greedy pass may round the same time differently (fused multiply-adds).
    hi = jax.lax.bitcast_convert_type(upper, ibits) + 64
    lo = jnp.zeros((), ibits)

    def body(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        feasible, _ = greedy_split(layer, rates, jax.lax.bitcast_convert_type(mid, dt))
        return jnp.where(feasible, lo, mid), jnp.where(feasible, mid, hi)

    lo, hi = jax.lax.fori_loop(0, steps, body, (lo, hi))
    feasible, rows = greedy_split(layer, rates, jax.lax.bitcast_convert_type(hi, dt))
    better = feasible & (jnp.max(device_times(layer, rates, rows)) <= upper)
    return jnp.where(better, rows, start_rows)


# --------------------------------------------------------------------------- baselines
def single_split(layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
    """Best single device: all rows on the active device that finishes the whole layer first."""
    rates = allocation_rates(cluster, share)
    total = layer.out_height
    whole = segment_time(layer, rates, jnp.zeros_like(total)[None].repeat(share.shape[-1]),
                         jnp.full(share.shape, total))
    pick = jnp.argmin(jnp.where(rates.active, whole, jnp.inf))
    return jnp.where(jnp.arange(share.shape[-1]) == pick, total, 0.0).astype(jnp.int32)


def equal_split(layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
    """Equal rows over the devices with a positive share (DeepThings-style grid); int32 (N,)."""
    active = jnp.asarray(share) > 0
    total = layer.out_height.astype(jnp.int32)
    k = jnp.maximum(jnp.sum(active), 1)
    rank = jnp.cumsum(active) - 1
    rows = jnp.where(active, total // k + (rank < total % k), 0)
    return rows.astype(jnp.int32)


def proportional_split(layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
    """Rows proportional to the allocated compute f_i = a_i F_i (MoDNN-style), largest remainder."""
    rates = allocation_rates(cluster, share)
    f = jnp.where(rates.active, share * cluster.flops, 0.0)
    total = layer.out_height
    ideal = f / jnp.sum(f) * total
    rows = jnp.floor(ideal)
    frac = jnp.where(rates.active, ideal - rows, -1.0)
    idx = jnp.arange(share.shape[-1])
    rank = jnp.sum((frac[None, :] > frac[:, None]) | ((frac[None, :] == frac[:, None]) & (idx[None, :] < idx[:, None])), axis=-1)
    remaining = total - jnp.sum(rows)
    rows = rows + (rank < remaining).astype(rows.dtype)
    return _fix_total(rows.astype(jnp.int32), total.astype(jnp.int32), rates.active)


def rebalance_split(layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
    """EdgeLD-style rebalancing: from the equal split, move one row at a time from the slowest device
    to the fastest active one while the exact layer latency falls. Ends (a while loop) when a move
    no longer helps; at most H_out * N moves. Rows (N,) int32."""
    return rebalance_moves(layer, cluster, share)[0]


def rebalance_moves(layer: LayerArrays, cluster: Cluster, share: jax.Array) -> tuple[jax.Array, jax.Array]:
    """:func:`rebalance_split`'s rows (N,) int32 and the number of moves it made (int32 scalar)."""
    rates = allocation_rates(cluster, share)
    rows0 = equal_split(layer, cluster, share)
    idx = jnp.arange(share.shape[-1])
    num = share.shape[-1]
    limit = jnp.minimum(layer.out_height, (2**31 - 1) // num).astype(jnp.int32) * num  # no int32 overflow

    def cond(state):
        _, _, moved, count = state
        return moved & (count < limit)

    def body(state):
        rows, best, _, count = state
        times = device_times(layer, rates, rows)
        slow = jnp.argmax(times)
        fast = jnp.argmin(jnp.where(rates.active & (idx != slow), times, jnp.inf))
        cand = rows - (idx == slow).astype(jnp.int32) + (idx == fast).astype(jnp.int32)
        cand_best = jnp.max(device_times(layer, rates, cand))
        ok = (cand_best < best) & (rows[slow] > 0) & rates.active[fast] & (fast != slow)
        return jnp.where(ok, cand, rows), jnp.where(ok, cand_best, best), ok, count + 1

    best0 = jnp.max(device_times(layer, rates, rows0))
    rows, _, moved, count = jax.lax.while_loop(cond, body, (rows0, best0, jnp.array(True), jnp.zeros((), jnp.int32)))
    return rows, count - 1 + moved.astype(jnp.int32)  # every pass but a last one that did not move


def lp_split(layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
    """CoEdge-style LP relaxation of the min-max split, solved on the host with scipy's HiGHS.

    The mixed-integer problem ``min T s.t. T >= alpha_i z_i + beta_i n_i, n_i <= H_out z_i,
    sum n_i = H_out, z_i in {0, 1}`` is relaxed to ``z_i in [0, 1]`` (so ``z_i = n_i / H_out`` at the
    optimum) and solved as an LP in (n, T); the LP rows are then rounded like the closed form.
    Not jittable: one host call per instance. Returns int32 rows (N,) as a numpy array.
    """
    from scipy.optimize import linprog

    f = np.asarray(cluster.flops, np.float64)
    b = np.asarray(cluster.bandwidth, np.float64)
    a = np.asarray(share, np.float64)
    active = a > 0
    safe = np.where(active, a, 1.0)
    spf = np.where(active, 1.0 / (safe * f), 0.0)
    spb = np.where(active, 1.0 / (safe * b), 0.0)
    in_row = float(layer.in_row_bytes) * spb
    stride, keff = float(layer.stride), float(layer.kernel_extent)
    beta = stride * in_row + float(layer.out_row_bytes) * spb + float(layer.row_work) * spf
    alpha = 2.0 * np.asarray(cluster.latency, np.float64) + max(keff - stride, 0.0) * in_row
    total = int(layer.out_height)
    num = a.shape[0]
    idx = np.flatnonzero(active)
    # variables: n_0..n_{N-1}, T ; minimise T subject to (alpha_i / H_out + beta_i) n_i <= T
    c = np.zeros(num + 1)
    c[-1] = 1.0
    a_ub = np.zeros((len(idx), num + 1))
    # Each row is scaled by the cheapest device's cost, and the spread capped, so that HiGHS sees
    # coefficients in [1, 1e12] (it reads 1e20 and above as infinite and refuses the model). A
    # device 1e12 times dearer than the cheapest gets at most 1e-12 of the rows either way.
    cost = alpha[idx] / total + beta[idx]
    a_ub[np.arange(len(idx)), idx] = np.minimum(cost / np.min(cost), LP_COST_SPREAD)
    a_ub[:, -1] = -1.0
    a_eq = np.zeros((1, num + 1))
    a_eq[0, :num] = 1.0
    bounds = [(0.0, float(total) if active[i] else 0.0) for i in range(num)] + [(0.0, None)]
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(len(idx)), A_eq=a_eq, b_eq=[total], bounds=bounds,
                  method="highs")
    if res.status != 0:  # pragma: no cover - the scaled LP is always feasible, bounded and finite
        raise RuntimeError(f"LP split failed: {res.message}")
    rows = np.floor(np.clip(res.x[:num], 0.0, total) + 1e-9).astype(np.int64)
    rows[~active] = 0
    for _ in range(max(0, total - int(rows.sum()))):  # the remaining rows, one by one, to the cheapest
        cost = np.where(active, alpha + beta * (rows + 1), np.inf)
        rows[int(np.argmin(cost))] += 1
    while rows.sum() > total:  # float round-off guard
        rows[int(np.argmax(np.where(rows > 0, alpha + beta * rows, -np.inf)))] -= 1
    return rows.astype(np.int32)


SOLVERS: dict[str, Solver] = {
    "closed_form": closed_form_split,
    "exact": exact_split,
    "single": single_split,
    "equal": equal_split,
    "proportional": proportional_split,
    "rebalance": rebalance_split,
    "lp": lp_split,
}

#: Solvers that run on the host, one instance at a time (not jittable).
HOST_SOLVERS = frozenset({"lp"})


def get_solver(name: str) -> Solver:
    """Solver by name; ``ValueError`` names the field for an unknown one."""
    if name not in SOLVERS:
        raise ValueError(f"field 'solver': unknown solver {name!r}; known: {', '.join(SOLVERS)}")
    return SOLVERS[name]


@functools.lru_cache(maxsize=None)
def batched_solver(name: str) -> Callable[[LayerArrays, Cluster, jax.Array], jax.Array]:
    """Jitted batched solver: layer fields (B,), cluster fields and shares (B, N) -> rows (B, N).

    The closed form runs device-major (:func:`_device_major_blocks`); the other JAX solvers are
    ``vmap``-ed (:func:`_chunked_vmap`). Cached per name so repeated calls with one shape never
    retrace."""
    solver = get_solver(name)
    if name in HOST_SOLVERS:
        def host(layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
            out = [solver(jax.tree.map(lambda a: a[b], layer), jax.tree.map(lambda a: a[b], cluster), share[b])
                   for b in range(share.shape[0])]
            return jnp.asarray(np.stack(out), jnp.int32)
        return host
    if name == "closed_form":
        return jax.jit(solve_device_major)
    return jax.jit(functools.partial(_chunked_vmap, jax.vmap(solver)))


#: Instances per block in vmapped batched solves: the intermediates of a block stay in cache.
BLOCK = 4096
#: Device-instances (N x block) per block of the device-major closed form (measured best near it).
DEVICE_MAJOR_BLOCK = 16384


def _blocks(batch: int, block: int, tree):
    """Pad the leading axis of every leaf to a whole number of blocks; leaves (blocks, block, ...)."""
    blocks = -(-batch // block)
    pad = blocks * block - batch

    def blocked(x):
        x = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]) if pad else x
        return x.reshape((blocks, block) + x.shape[1:])

    return blocks, jax.tree.map(blocked, tree)


def _chunked_vmap(fn: Callable, layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
    """Apply a vmapped solver block by block (``lax.map`` over blocks of :data:`BLOCK` instances).

    One vectorised pass over a million instances is memory-bound: every intermediate of the solver
    is written out and read back. Blocks keep them in cache, which measured about 3x faster on a
    2-core CPU. The batch is padded to a whole number of blocks (static shapes) and cut back.
    """
    batch = share.shape[0]
    if batch <= BLOCK:
        return fn(layer, cluster, share)
    blocks, args = _blocks(batch, BLOCK, (layer, cluster, share))
    out = jax.lax.map(lambda a: fn(*a), args)
    return out.reshape((blocks * BLOCK,) + out.shape[2:])[:batch]


def _device_major_blocks(fn: Callable, layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
    """Run a device-major solver (cluster fields and shares (N, ...)) on a batch with the device
    axis last, rows (B, N): blocks of about :data:`DEVICE_MAJOR_BLOCK` / N instances (``lax.map``),
    each transposed once to (N, block) so that the batch is the minor, vectorised axis (the
    transposed block is materialised, not re-read with a stride by every fused loop)."""
    batch, num = share.shape
    block = max(256, DEVICE_MAJOR_BLOCK // num)

    def solve(args):
        layer, cluster, share = args
        cluster, share = jax.lax.optimization_barrier(jax.tree.map(jnp.transpose, (cluster, share)))
        return fn(layer, cluster, share).T

    if batch <= block:
        return solve((layer, cluster, share))
    blocks, args = _blocks(batch, block, (layer, cluster, share))
    out = jax.lax.map(solve, args)
    return out.reshape(blocks * block, num)[:batch]


def solve_device_major(layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
    """The closed form on a batch with the device axis last (layer fields (B,), cluster fields and
    shares (B, N)); int32 rows (B, N). Traceable (the body of ``solve_batch("closed_form", ...)``).

    On the CPU this is the compiled kernel (:mod:`jaxsplit.kernels`: the same rows, several times
    faster) when it is available; elsewhere, or with ``JAXSPLIT_KERNELS=off``, the array code
    :func:`solve_device_major_arrays`.
    """
    if kernels.supports(share.shape[-1]):
        return kernels.on_cpu(kernels.kernel_rows, solve_device_major_arrays, layer, cluster, share)
    return solve_device_major_arrays(layer, cluster, share)


def solve_device_major_arrays(layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
    """:func:`solve_device_major` as array code on any platform: device-major in blocks
    (:func:`_device_major_blocks`)."""
    return _device_major_blocks(closed_form_split, layer, cluster, share).astype(jnp.int32)


def check_batch(layer: LayerArrays, cluster: Cluster, share: jax.Array) -> None:
    """Refuse a batch outside the numeric contract (:mod:`jaxsplit.contract`) with a ``ValueError``
    naming the field, the index and the value. Skipped for traced arguments (inside ``jit``)."""
    leaves = jax.tree.leaves((layer, cluster, share))
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        return
    cols = {k: np.asarray(getattr(layer, k), np.float64) for k in LAYER_FIELDS}
    shapes = {k: v.shape for k, v in cols.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 1:
        raise ValueError(f"layer fields must all have one shape (B,), got {shapes}")
    f, b, t, a = (np.asarray(x, np.float64) for x in (cluster.flops, cluster.bandwidth, cluster.latency, share))
    contract.check_cluster_arrays(f, b, t, a)
    if a.ndim != 2 or a.shape[0] != cols["in_height"].shape[0]:
        raise ValueError(f"field 'share' must have shape (B, N) with B = {cols['in_height'].shape[0]} "
                         f"layer-instances, got {a.shape}")
    contract.check_layer_columns(cols)
    contract.check_times(contract.whole_layer_times(cols, f, b, t, a), what="layer-instance: ")


def solve_batch(name: str, layer: LayerArrays, cluster: Cluster, share: jax.Array, *,
                check: bool = True) -> jax.Array:
    """Solve a batch of layer-instances with solver ``name``; rows (B, N) int32.

    Args:
      layer: fields of shape (B,); cluster: fields (B, N); share: (B, N).
      check: refuse inputs outside the numeric contract (:func:`check_batch`, a host pass over the
        batch); ``False`` skips it for inputs already checked.
    """
    get_solver(name)
    for arg, value, kind, shape in (("layer", layer, LayerArrays, "fields of shape (B,)"),
                                    ("cluster", cluster, Cluster, "fields of shape (B, N)")):
        if not isinstance(value, kind):
            raise ValueError(f"field '{arg}': expected a {kind.__name__} with {shape}, got {type(value).__name__}")
    if not hasattr(share, "shape") or not hasattr(share, "dtype"):
        raise ValueError(f"field 'share': expected an array of shape (B, N) (jax.numpy or numpy), got "
                         f"{type(share).__name__}; wrap it in jnp.asarray")
    if check:
        check_batch(layer, cluster, share)
    return batched_solver(name)(layer, cluster, share)
