"""Per-model constants of the allocation environment, computed once on the host.

A request of model k runs every layer of k. Layers with identical geometry (equal
:class:`~jaxsplit.latency.LayerArrays` rows) get identical splits and latencies, so each model is
stored as its *unique* layers with a multiplicity; the tables of all models are padded to a common
length U with multiplicity 0 (a mask), and ``size`` says how many entries of each model are real.
The environment lays the real unique layers of a batch of requests end to end and solves them in
chunks (:meth:`~jaxsplit.envs.alloc.AllocationEnv.exec_times`), with no Python loop over layers.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxsplit import zoo
from jaxsplit.latency import LayerArrays, layer_arrays_numpy


@struct.dataclass
class Catalogue:
    """The model catalogue as padded arrays (static shapes; K models, U unique layers, T = total).

    Attributes:
      layers: :class:`LayerArrays` with fields of shape (K, U): each model's unique layers, padded.
      count: (K, U) float multiplicity of each unique layer (0 for padding).
      size: (K,) int32 number of unique layers of each model (its first ``size[k]`` entries are real).
      work: (K,) FLOP of one request of each model (sum of phi * H_out over its layers).
      flat_layers: :class:`LayerArrays` with fields (T,): every model's unique layers back to back,
        unpadded (for the per-episode reference latencies, solved a chunk at a time).
      flat_model: (T,) int32 model index of each flat layer.
      flat_count: (T,) float multiplicity of each flat layer.
    """

    layers: LayerArrays
    count: jnp.ndarray
    size: jnp.ndarray
    work: jnp.ndarray
    flat_layers: LayerArrays
    flat_model: jnp.ndarray
    flat_count: jnp.ndarray


def unique_layers(name: str, input_size: tuple[int, int], bytes_per_element: float) -> tuple[np.ndarray, np.ndarray]:
    """Unique layer rows of a zoo model, in first-occurrence order, and their multiplicities.

    Returns (rows (u, 8) float64 in the field order of LayerArrays, counts (u,) float64).
    """
    cols = layer_arrays_numpy(zoo.get(name, input_size), bytes_per_element, np.float64)
    table = np.stack([cols[f] for f in LayerArrays.__dataclass_fields__], axis=1)
    uniq, first, inverse = np.unique(table, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    counts = np.bincount(inverse.reshape(-1), minlength=len(uniq)).astype(np.float64)
    return uniq[order], counts[order]


def build_catalogue(models: Sequence[str], input_size: tuple[int, int], bytes_per_element: float,
                    dtype) -> Catalogue:
    """Pad the unique-layer tables of ``models`` to one length; see :class:`Catalogue`."""
    tables = [unique_layers(m, input_size, bytes_per_element) for m in models]
    width = max(len(t[0]) for t in tables)
    fields = list(LayerArrays.__dataclass_fields__)
    padded = np.zeros((len(models), width, len(fields)))
    # padding rows: a harmless 1-row layer (never counted: multiplicity 0)
    padded[:, :, fields.index("in_height")] = 1.0
    padded[:, :, fields.index("out_height")] = 1.0
    padded[:, :, fields.index("stride")] = 1.0
    padded[:, :, fields.index("kernel_extent")] = 1.0
    count = np.zeros((len(models), width))
    for k, (rows, c) in enumerate(tables):
        padded[k, : len(rows)] = rows
        count[k, : len(rows)] = c
    work = np.einsum("ku,ku,ku->k", padded[:, :, fields.index("row_work")],
                     padded[:, :, fields.index("out_height")], count)
    flat = np.concatenate([t[0] for t in tables], axis=0)
    flat_model = np.concatenate([np.full(len(t[0]), k) for k, t in enumerate(tables)])
    flat_count = np.concatenate([t[1] for t in tables])

    def arrays(table: np.ndarray) -> LayerArrays:
        return LayerArrays(**{f: jnp.asarray(table[..., i], dtype) for i, f in enumerate(fields)})

    size = np.array([len(rows) for rows, _ in tables], np.int32)
    return Catalogue(arrays(padded), jnp.asarray(count, dtype), jnp.asarray(size), jnp.asarray(work, dtype), arrays(flat),
                     jnp.asarray(flat_model, jnp.int32), jnp.asarray(flat_count, dtype))
