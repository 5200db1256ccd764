"""The latency model of split CNN inference as pure JAX functions (MODEL.md sections 2 and 3).

Everything here is written for one instance (one layer, N devices) and batched with ``jax.vmap``:
batch axes lead, the device axis is last. Arrays are float32 by default; under
``jax.experimental.enable_x64`` the same functions run in float64 for reference checks.

Units: seconds, bytes, FLOP, FLOP/s, bytes/s.

>>> import jax, jax.numpy as jnp
>>> from jaxsplit import latency, zoo
>>> layer = latency.layer_arrays(zoo.get("vgg16")[:1])            # one layer, leading axis 1
>>> cluster = latency.Cluster.create(flops=[2e10, 5e10], bandwidth=[jnp.inf, 1.25e8],
...                                  latency=[0.0, 0.002])
>>> rows = jnp.array([112, 112])
>>> t = latency.layer_latency(jax.tree.map(lambda a: a[0], layer), cluster, jnp.ones(2), rows)
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from . import contract
from .layers import Layer


@struct.dataclass
class LayerArrays:
    """Per-layer constants of the latency model; every field has the same (batch) shape.

    Attributes:
      in_height: H, input rows.
      out_height: H_out, output rows.
      stride: sh, vertical stride (rows).
      pad_top: top padding (rows).
      kernel_extent: keff_h = dh (kh - 1) + 1 (rows).
      in_row_bytes: bytes of one input row, W C_in q.
      out_row_bytes: bytes of one output row, W_out C_out q.
      row_work: phi, FLOP per output row.
    """

    in_height: jax.Array
    out_height: jax.Array
    stride: jax.Array
    pad_top: jax.Array
    kernel_extent: jax.Array
    in_row_bytes: jax.Array
    out_row_bytes: jax.Array
    row_work: jax.Array


#: The fields of :class:`LayerArrays` in declaration order: the column order wherever layers are
#: stacked into a matrix (the compiled kernel's inputs, the catalogue's tables).
LAYER_FIELDS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(LayerArrays))
#: The columns of the compiled kernel's exec-times table: the layer fields, then the layer's
#: multiplicity. ``jaxsplit/kernels/closed_form.cc`` reports the order it assumes and
#: :mod:`jaxsplit.kernels` refuses a library that disagrees.
TABLE_FIELDS: tuple[str, ...] = LAYER_FIELDS + ("count",)


def layer_arrays_numpy(layers: Sequence[Layer], bytes_per_element: float = 4.0,
                       dtype: type = np.float32) -> dict[str, np.ndarray]:
    """The fields of :class:`LayerArrays` for a table, as numpy arrays of shape (L,); ``bytes_per_element``
    q (bytes) must be in [1e-3, 1e3] (docs/MODEL.md, section 8)."""
    q = contract.check_number(bytes_per_element, "bytes_per_element", contract.MIN_BYTES_PER_ELEMENT,
                              contract.MAX_BYTES_PER_ELEMENT)
    cols: dict[str, list[float]] = {name: [] for name in LAYER_FIELDS}
    for layer in layers:
        cols["in_height"].append(layer.in_height)
        cols["out_height"].append(layer.out_height)
        cols["stride"].append(layer.stride[0])
        cols["pad_top"].append(layer.padding[0])
        cols["kernel_extent"].append(layer.kernel_extent[0])
        cols["in_row_bytes"].append(layer.in_width * layer.in_channels * q)
        cols["out_row_bytes"].append(layer.out_width * layer.out_channels * q)
        cols["row_work"].append(layer.row_work)
    return {k: np.asarray(v, dtype=dtype) for k, v in cols.items()}


def layer_arrays(layers: Sequence[Layer], bytes_per_element: float = 4.0, dtype=None) -> LayerArrays:
    """Stack a layer table into :class:`LayerArrays` with leading axis L."""
    dtype = dtype or jnp.result_type(float)
    cols = layer_arrays_numpy(layers, bytes_per_element, np.float64)
    return LayerArrays(**{k: jnp.asarray(v, dtype=dtype) for k, v in cols.items()})


@struct.dataclass
class Cluster:
    """Device capacities (MODEL.md section 2); each field has shape (..., N).

    Attributes:
      flops: F_i, compute capacity (FLOP/s), positive and finite.
      bandwidth: B_i, link bandwidth to the coordinator (bytes/s); ``inf`` for a local device.
      latency: tau_i, per-message latency (s), non-negative.
    """

    flops: jax.Array
    bandwidth: jax.Array
    latency: jax.Array

    @classmethod
    def create(cls, flops, bandwidth, latency, dtype=None) -> "Cluster":
        """A cluster from capacities of one shape (..., N), checked against the numeric contract.

        Raises ``ValueError`` naming the field and value for mismatched shapes or a value outside
        :mod:`jaxsplit.contract`'s ranges (traced arguments, inside ``jit``, are not checked)."""
        dtype = dtype or jnp.result_type(float)
        if not any(isinstance(x, jax.core.Tracer) for x in (flops, bandwidth, latency)):
            from .contract import check_cluster_arrays

            arrays = []
            for name, x in (("flops", flops), ("bandwidth", bandwidth), ("latency", latency)):
                try:
                    arrays.append(np.asarray(x, np.float64))
                except (TypeError, ValueError):
                    raise ValueError(f"field '{name}' must be an array of numbers, got {x!r}") from None
            check_cluster_arrays(*arrays)
        return cls(jnp.asarray(flops, dtype), jnp.asarray(bandwidth, dtype), jnp.asarray(latency, dtype))

    @property
    def num_devices(self) -> int:
        return self.flops.shape[-1]


@struct.dataclass
class Rates:
    """Per-device costs under an allocation; shape (..., N).

    Attributes:
      active: share > 0.
      sec_per_flop: 1 / (a_i F_i) (s/FLOP), 0 where inactive.
      sec_per_byte: 1 / (a_i B_i) (s/byte), 0 for a local device or where inactive.
      message: 2 tau_i (s), the scatter and gather message latencies.
    """

    active: jax.Array
    sec_per_flop: jax.Array
    sec_per_byte: jax.Array
    message: jax.Array


def allocation_rates(cluster: Cluster, share: jax.Array) -> Rates:
    """Per-device costs f_i = a_i F_i, b_i = a_i B_i as reciprocals (MODEL.md section 2).

    Args:
      cluster: capacities, fields of shape (N,).
      share: a, shape (N,), in [0, 1].
    """
    share = jnp.asarray(share, cluster.flops.dtype)
    active = share > 0
    safe = jnp.where(active, share, 1.0)
    sec_per_flop = jnp.where(active, 1.0 / (safe * cluster.flops), 0.0)
    sec_per_byte = jnp.where(active, 1.0 / (safe * cluster.bandwidth), 0.0)  # 1/inf = 0: local
    return Rates(active, sec_per_flop, sec_per_byte, 2.0 * cluster.latency)


def segment_time(layer: LayerArrays, rates: Rates, start: jax.Array, rows: jax.Array) -> jax.Array:
    """T_i for output rows [start, start + rows) on each device (MODEL.md section 3), seconds.

    ``T = 2 tau + (R W C_in q + n W_out C_out q) / b + phi n / f`` with R the clamped input rows
    read; 0 where ``rows == 0``. Shapes: layer fields scalar, rates/start/rows (N,).
    """
    start = start.astype(rates.sec_per_flop.dtype)
    n = rows.astype(rates.sec_per_flop.dtype)
    lo = jnp.maximum(0.0, start * layer.stride - layer.pad_top)
    hi = jnp.minimum(layer.in_height, (start + n - 1.0) * layer.stride - layer.pad_top + layer.kernel_extent)
    read = jnp.maximum(hi - lo, 0.0)
    t = (rates.message + (read * layer.in_row_bytes + n * layer.out_row_bytes) * rates.sec_per_byte
         + n * layer.row_work * rates.sec_per_flop)
    return jnp.where(n > 0, t, 0.0)


def device_times(layer: LayerArrays, rates: Rates, rows: jax.Array) -> jax.Array:
    """T_i of every device for a split ``rows`` (N,) taken in device order; seconds, shape (N,)."""
    start = jnp.cumsum(rows) - rows
    return segment_time(layer, rates, start, rows)


def layer_latency(layer: LayerArrays, cluster: Cluster, share: jax.Array, rows: jax.Array) -> jax.Array:
    """Exact latency max_i T_i of one layer under split ``rows`` (N,) and shares ``share`` (N,); s."""
    return jnp.max(device_times(layer, allocation_rates(cluster, share), rows))


def request_latency(layers: LayerArrays, cluster: Cluster, share: jax.Array, rows: jax.Array,
                    mask: jax.Array | None = None) -> jax.Array:
    """Latency of a whole request: the sum of its layers' latencies (seconds).

    Args:
      layers: fields of shape (L,).
      cluster: fields (N,); share: (N,).
      rows: (L, N) rows per layer and device.
      mask: optional (L,) booleans; padded layers (False) count nothing.
    """
    rates = allocation_rates(cluster, share)
    per_layer = jax.vmap(lambda layer, r: jnp.max(device_times(layer, rates, r)))(layers, rows)
    if mask is not None:
        per_layer = jnp.where(mask, per_layer, 0.0)
    return jnp.sum(per_layer)
