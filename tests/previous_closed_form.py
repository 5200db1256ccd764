"""The closed-form split exactly as it was before the device-major rewrite (kept for identity tests).

A frozen copy of ``jaxsplit.solvers.closed_form_split`` and its helpers, one instance at a time
with the device axis last. tests/test_closed_form_identity.py checks that the library's closed
form returns the same int32 rows, bit for bit, on random and adversarial instances.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsplit.latency import Rates, allocation_rates, device_times
from jaxsplit.latency import Cluster, LayerArrays

CLOSED_FORM_CORRECTION_ROUNDS = 3


# --------------------------------------------------------------------------- the affine model
def affine_model(layer: LayerArrays, rates: Rates) -> tuple[jax.Array, jax.Array]:
    """Interior-halo affine model T_i(n) = alpha_i + beta_i n of MODEL.md section 4; seconds.

    ``beta_i = (sh W C_in q + W_out C_out q)/b_i + phi/f_i``,
    ``alpha_i = 2 tau_i + max(keff_h - sh, 0) W C_in q / b_i``. Shapes (N,).
    """
    in_row = layer.in_row_bytes * rates.sec_per_byte
    beta = layer.stride * in_row + layer.out_row_bytes * rates.sec_per_byte + layer.row_work * rates.sec_per_flop
    alpha = rates.message + jnp.maximum(layer.kernel_extent - layer.stride, 0.0) * in_row
    return alpha, beta


def water_fill(alpha: jax.Array, beta: jax.Array, active: jax.Array, total: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Equal-finish-time continuous split of ``total`` rows (MODEL.md section 4), without a sort.

    Over active set A: ``T* = (H_out + sum_A alpha/beta) / sum_A 1/beta``, ``n_i = (T* - alpha_i)/beta_i``,
    where A is the prefix (in increasing alpha) that minimises T*: adding a device with
    ``alpha < T`` lowers T and one with ``alpha >= T`` raises it, so the prefix values are unimodal and
    their minimum is the water level. Every prefix is evaluated at once with an N x N mask.

    Args:
      alpha, beta: (N,) seconds and seconds per row; beta > 0 where active.
      active: (N,) booleans.
      total: H_out, scalar.
    Returns:
      (T*, n): the water level (s) and the continuous rows (N,), 0 where inactive.
    """
    w = jnp.where(active, 1.0 / jnp.where(active, beta, 1.0), 0.0)
    aw = jnp.where(active, alpha * w, 0.0)
    idx = jnp.arange(alpha.shape[-1])
    before = (alpha[None, :] < alpha[:, None]) | ((alpha[None, :] == alpha[:, None]) & (idx[None, :] <= idx[:, None]))
    # A device is always in its own prefix. Said explicitly because XLA CPU may recompute ``alpha``
    # inside the fused comparison twice with different rounding (contracted multiply-adds), and
    # then ``alpha_i < alpha_i`` and ``alpha_i == alpha_i`` can both be false.
    before = before | (idx[None, :] == idx[:, None])
    mask = before & active[None, :]
    num = total + jnp.sum(jnp.where(mask, aw[None, :], 0.0), axis=-1)
    den = jnp.sum(jnp.where(mask, w[None, :], 0.0), axis=-1)
    levels = jnp.where(active, num / jnp.where(active, den, 1.0), jnp.inf)
    level = jnp.min(levels)
    n = jnp.where(active, jnp.maximum(0.0, (level - alpha) * w), 0.0)
    return level, n


def _fix_total(rows: jax.Array, total: jax.Array, active: jax.Array) -> jax.Array:
    """Make int rows sum exactly to ``total`` (a guard against float round-off; normally a no-op).

    Excess is cut from the end (cumulative clip); a deficit goes to the last active device.
    """
    ends = jnp.minimum(jnp.cumsum(rows), total)
    rows = ends - jnp.concatenate([jnp.zeros((1,), ends.dtype), ends[:-1]])
    deficit = total - jnp.sum(rows)
    idx = jnp.arange(rows.shape[-1])
    last = jnp.max(jnp.where(active, idx, -1))
    return rows + jnp.where(idx == last, deficit, 0)


def round_split(n: jax.Array, alpha: jax.Array, beta: jax.Array, active: jax.Array, total: jax.Array) -> jax.Array:
    """Round continuous rows to integers summing to ``total`` (MODEL.md section 4).

    Floor, then give the remaining rows one by one to the device with the smallest
    ``alpha_i + beta_i (n_i + 1)``. The remainder is below the number of active devices, so N
    rounds (a static count) always suffice. Returns int32 (N,).
    """
    num = n.shape[-1]
    rows = jnp.where(active, jnp.floor(n), 0.0).astype(jnp.int32)
    total_i = total.astype(jnp.int32)
    remaining = total_i - jnp.sum(rows)
    idx = jnp.arange(num)
    for _ in range(num):
        cost = jnp.where(active, alpha + beta * (rows + 1).astype(alpha.dtype), jnp.inf)
        pick = jnp.argmin(cost)
        rows = rows + jnp.where((idx == pick) & (remaining > 0), 1, 0)
        remaining = remaining - 1
    return _fix_total(rows, total_i, active)


# --------------------------------------------------------------------------- closed form
def border_intercepts(layer: LayerArrays, rates: Rates, first: jax.Array, last: jax.Array) -> jax.Array:
    """Exact intercepts alpha_i of T_i(n) = alpha_i + beta_i n, taking the image borders into account.

    An interior segment reads ``(n - 1) sh + keff`` input rows; the first segment (start 0) reads
    ``p_top`` fewer rows; the last reads up to ``H_end = min(H, (H_out - 1) sh - p_top + keff)``.
    ``first`` and ``last`` are (N,) booleans marking the devices at the two borders.
    """
    in_row = layer.in_row_bytes * rates.sec_per_byte
    halo = layer.kernel_extent - layer.stride
    h_end = jnp.minimum(layer.in_height, (layer.out_height - 1.0) * layer.stride - layer.pad_top + layer.kernel_extent)
    extra = jnp.where(first, halo - layer.pad_top, halo)
    extra = jnp.where(last, h_end + layer.pad_top - layer.out_height * layer.stride, extra)
    extra = jnp.where(first & last, h_end - layer.out_height * layer.stride, extra)
    return rates.message + extra * in_row


def _border_flags(rows_positive: jax.Array) -> tuple[jax.Array, jax.Array]:
    idx = jnp.arange(rows_positive.shape[-1])
    first_idx = jnp.min(jnp.where(rows_positive, idx, rows_positive.shape[-1]))
    last_idx = jnp.max(jnp.where(rows_positive, idx, -1))
    return idx == first_idx, idx == last_idx


def closed_form_plain(layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
    """The unrefined closed form of MODEL.md section 4 (interior-halo model, floor + greedy rounding)."""
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
    """
    rates = allocation_rates(cluster, share)
    alpha, beta = affine_model(layer, rates)
    total = layer.out_height
    _, n_plain = water_fill(alpha, beta, rates.active, total)
    first, last = _border_flags(n_plain > 0)
    alpha_b = border_intercepts(layer, rates, first, last)
    _, n = water_fill(alpha_b, beta, rates.active, total)
    rows = round_split(n, alpha_b, beta, rates.active, total)
    rows = correct_split(layer, rates, rows, alpha_b, beta, correction_rounds)
    # Never worse than the plain rule: keep its rows where the refinement lost (rare).
    plain = round_split(n_plain, alpha, beta, rates.active, total)
    better = jnp.max(device_times(layer, rates, rows)) <= jnp.max(device_times(layer, rates, plain))
    return jnp.where(better, rows, plain)


def correct_split(layer: LayerArrays, rates: Rates, rows: jax.Array, alpha: jax.Array, beta: jax.Array,
                  rounds: int) -> jax.Array:
    """Bounded local correction: ``rounds`` one-row moves from the slowest device, each kept only if
    it lowers the exact layer latency. Shapes (N,)."""
    idx = jnp.arange(rows.shape[-1])
    times = device_times(layer, rates, rows)
    best = jnp.max(times)
    for _ in range(rounds):
        slow = jnp.argmax(times)
        cost = jnp.where(rates.active & (idx != slow), alpha + beta * (rows + 1).astype(alpha.dtype), jnp.inf)
        fast = jnp.argmin(cost)
        cand = rows - (idx == slow).astype(rows.dtype) + (idx == fast).astype(rows.dtype)
        cand_times = device_times(layer, rates, cand)
        cand_best = jnp.max(cand_times)
        ok = (cand_best < best) & (rows[slow] > 0) & jnp.isfinite(cost[fast])
        rows = jnp.where(ok, cand, rows)
        times = jnp.where(ok, cand_times, times)
        best = jnp.where(ok, cand_best, best)
    return rows
