"""The numeric contract: the ranges within which every solver's result is exact (docs/MODEL.md, section 8).

The solvers run in float32 with int32 rows. Inside these ranges the rows are exact integers in
float32 (every row index, padded coordinate and row count is below 2^24), every product and sum of
the latency model stays finite and normal, and a split's latency is finite. Outside them an input is
refused with a ``ValueError`` that names the field, its value and the range, at every edge: the
instance format (:mod:`jaxsplit.instance`), :class:`jaxsplit.layers.Layer`, :func:`jaxsplit.zoo.get`,
:meth:`jaxsplit.latency.Cluster.create` and :func:`jaxsplit.solvers.solve_batch`.

Units: seconds, bytes, FLOP, FLOP/s, bytes/s.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Largest layer size (rows, columns, channels, kernel, stride, dilation, groups, padding) and largest
#: padded input extent H + p_top + p_bottom: below 2^24 every row index is exact in float32.
MAX_SIZE = 2**24 - 1
#: Most devices in one instance: bounds the compile time and memory of the solvers, whose loops run
#: over the devices (docs/MODEL.md, section 8; compile time against N in benchmarks/RESULTS.md).
MAX_DEVICES = 1024
#: Compute capacity F (FLOP/s) and link bandwidth B (bytes/s) ranges; B may also be infinite (local).
MIN_CAPACITY, MAX_CAPACITY = 1.0, 1e24
#: Per-message latency tau (s).
MAX_MESSAGE_LATENCY = 1e6
#: Smallest positive share: a share is 0 (the device takes no rows) or in [MIN_SHARE, 1].
MIN_SHARE = 1e-12
#: Bytes per transferred element q.
MIN_BYTES_PER_ELEMENT, MAX_BYTES_PER_ELEMENT = 1e-3, 1e3
#: Largest work of one layer (phi H_out, FLOP) and largest bytes of one layer's input or output.
MAX_LAYER_WORK = 1e36
#: Largest time (s) any device may take for a whole layer, and the largest request latency bound
#: (the sum over layers of those times): far below float32's 3.4e38, so sums stay finite.
MAX_TIME = 1e30
#: Offered load rho of the environment and of every evaluation.
MIN_LOAD, MAX_LOAD = 1e-6, 1e6
#: Random seeds: 64-bit signed integers (what ``jax.random.key`` takes).
MIN_SEED, MAX_SEED = -(2**63), 2**63 - 1


def check_number(value: Any, field: str, low: float, high: float, *, where: str = "",
                 zero: bool = False, infinite: bool = False) -> float:
    """``value`` as a float in [low, high] (or 0 when ``zero``, or +inf when ``infinite``).

    Raises ``ValueError`` ``{where}field '{field}' must be ..., got {value!r}``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where}field '{field}' must be a number, got {value!r}")
    v = float(value)
    if infinite and v == math.inf:
        return v
    if zero and v == 0.0:
        return v
    if not math.isfinite(v) or not low <= v <= high:
        extra = (" or 0" if zero else "") + (" or infinite" if infinite else "")
        raise ValueError(f"{where}field '{field}' must be in [{low:g}, {high:g}]{extra}, got {value!r}")
    return v


def check_loads(loads: Any, field: str = "loads") -> tuple[float, ...]:
    """A non-empty sequence of offered loads, each a number in [MIN_LOAD, MAX_LOAD], as floats;
    ValueError naming ``field`` (a single number, a string or an empty list is refused)."""
    if isinstance(loads, (str, bytes)) or not hasattr(loads, "__len__") or not hasattr(loads, "__iter__"):
        raise ValueError(f"field '{field}': expected a sequence of numbers (e.g. [0.3, 0.9]), got {loads!r}")
    if len(loads) == 0:
        raise ValueError(f"field '{field}': need at least one load")
    return tuple(check_number(rho, f"{field}[{i}]", MIN_LOAD, MAX_LOAD) for i, rho in enumerate(loads))


def check_seed(value: Any, field: str = "seed", low: int = MIN_SEED, high: int = MAX_SEED) -> int:
    """An integer random seed in [low, high] (default: a 64-bit signed integer); ValueError
    ``field '{field}' must be an integer in [low, high], got {value!r}``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"field '{field}' must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def check_size(value: Any, field: str, *, where: str = "", low: int = 1) -> int:
    """An integer size in [low, MAX_SIZE]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        kind = "a positive integer" if low >= 1 else "a non-negative integer"
        raise ValueError(f"{where}field '{field}' must be {kind}, got {value!r}")
    if value > MAX_SIZE:
        raise ValueError(f"{where}field '{field}' must be at most {MAX_SIZE} (2^24 - 1), got {value!r}")
    return int(value)


def _array_range(name: str, a: np.ndarray, low: float, high: float, *, zero: bool = False,
                 infinite: bool = False) -> None:
    ok = np.isfinite(a) & (a >= low) & (a <= high)
    if zero:
        ok |= a == 0
    if infinite:
        ok |= a == np.inf
    if not ok.all():
        at = tuple(int(i) for i in np.argwhere(~ok)[0])
        extra = (" or 0" if zero else "") + (" or infinite" if infinite else "")
        raise ValueError(f"field '{name}{list(at)}' must be in [{low:g}, {high:g}]{extra}, got {float(a[at])!r}")


def check_cluster_arrays(flops: np.ndarray, bandwidth: np.ndarray, latency: np.ndarray,
                         share: np.ndarray | None = None) -> None:
    """Ranges and matching shapes of cluster arrays (..., N) and shares (..., N), as float64."""
    shapes = {"flops": flops.shape, "bandwidth": bandwidth.shape, "latency": latency.shape}
    if share is not None:
        shapes["share"] = share.shape
    if len(set(shapes.values())) != 1:
        raise ValueError("fields " + ", ".join(f"'{k}'" for k in shapes) + " must have one shape, got "
                         + ", ".join(f"{k} {v}" for k, v in shapes.items()))
    if flops.ndim == 0 or flops.shape[-1] < 1:
        raise ValueError(f"field 'flops' must have a device axis with at least one device, got shape {flops.shape}")
    if flops.shape[-1] > MAX_DEVICES:
        raise ValueError(f"field 'flops': at most {MAX_DEVICES} devices, got {flops.shape[-1]}")
    _array_range("flops", flops, MIN_CAPACITY, MAX_CAPACITY)
    _array_range("bandwidth", bandwidth, MIN_CAPACITY, MAX_CAPACITY, infinite=True)
    _array_range("latency", latency, 0.0, MAX_MESSAGE_LATENCY)
    if share is not None:
        _array_range("share", share, MIN_SHARE, 1.0, zero=True)
        if not (share > 0).any(axis=-1).all():
            at = tuple(int(i) for i in np.argwhere(~(share > 0).any(axis=-1))[0])
            raise ValueError(f"field 'share{list(at)}': no device has a positive share")


def whole_layer_times(cols: dict[str, np.ndarray], flops: np.ndarray, bandwidth: np.ndarray,
                      latency: np.ndarray, share: np.ndarray) -> np.ndarray:
    """Upper bound (s) of any device's time on a layer: the whole layer on it, float64 (..., N).

    ``cols`` are the :class:`jaxsplit.latency.LayerArrays` fields, each of shape (...,) (one per
    layer-instance); inactive devices give 0. Every split's device times are at most this bound: a
    device reads at most H input rows and computes at most H_out output rows."""
    a = np.where(share > 0, share, 1.0)
    h = cols["in_height"][..., None]
    ho = cols["out_height"][..., None]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        sec_per_byte = np.where(np.isinf(bandwidth), 0.0, 1.0 / (a * bandwidth))
        t = (2.0 * latency + (h * cols["in_row_bytes"][..., None] + ho * cols["out_row_bytes"][..., None]) * sec_per_byte
             + ho * cols["row_work"][..., None] / (a * flops))
    return np.where(share > 0, t, 0.0)


def check_layer_columns(cols: dict[str, np.ndarray], where: str = "") -> None:
    """Ranges of :class:`LayerArrays` columns (float64 (...,)): sizes below 2^24, work and bytes bounded."""
    for name in ("in_height", "out_height", "stride", "kernel_extent"):
        _array_range(name, cols[name], 1.0, MAX_SIZE)
    _array_range("pad_top", cols["pad_top"], 0.0, MAX_SIZE)
    for name in ("in_row_bytes", "out_row_bytes", "row_work"):
        _array_range(name, cols[name], 0.0, MAX_LAYER_WORK)
    work = cols["row_work"] * cols["out_height"]
    _array_range("row_work * out_height", work, 0.0, MAX_LAYER_WORK)
    for name, rows in (("in_row_bytes * in_height", cols["in_height"]), ("out_row_bytes * out_height", cols["out_height"])):
        _array_range(name, cols[name.split(" ")[0]] * rows, 0.0, MAX_LAYER_WORK)


def check_times(times: np.ndarray, where: str = "", what: str = "") -> None:
    """Refuse whole-layer times (..., N) above :data:`MAX_TIME` (or not finite)."""
    bad = ~(np.isfinite(times) & (times <= MAX_TIME))
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{where}{what}device {at[-1]} would take {times[at]:.3g} s for the whole layer, above the "
            f"limit {MAX_TIME:g} s (capacities, shares and sizes too extreme for float32)")
