"""The execution time of inference requests over a model catalogue (MODEL.md sections 3 and 6).

A request of model k runs every layer of k. Layers with identical geometry (equal
:class:`~jaxsplit.latency.LayerArrays` rows) get identical splits and latencies, so each model is
stored as its *unique* layers with a multiplicity; the tables of all models are padded to a common
length U with multiplicity 0 (a mask), and ``size`` says how many entries of each model are real
(:class:`Catalogue`, built once on the host by :func:`build_catalogue`).

:class:`RequestLatency` is the engine on top of it: given a cluster and the shares a request gets,
it splits every layer of the request's model with the split rule (:data:`SPLIT_RULES`) and returns
the execution time E, for one request or a batch. A batch lays the real unique layers of its requests
end to end and solves them in chunks (:meth:`RequestLatency.exec_times`), with no Python loop over
layers; on the CPU the closed form runs as the compiled kernel (:mod:`jaxsplit.kernels`), whose table
columns are :data:`TABLE_FIELDS`.

>>> import jax.numpy as jnp
>>> from jaxsplit.catalogue import RequestLatency
>>> from jaxsplit.latency import Cluster
>>> engine = RequestLatency(("alexnet",), (224, 224), 4.0, num_devices=2)
>>> cluster = Cluster.create(flops=[2e10, 5e10], bandwidth=[jnp.inf, 1.25e8], latency=[0.0, 0.002])
>>> e = engine.exec_time(cluster, jnp.ones(2), jnp.int32(0))   # seconds
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.custom_batching import custom_vmap

from jaxsplit import kernels
from jaxsplit import models as model_specs
from jaxsplit.latency import (LAYER_FIELDS, TABLE_FIELDS, Cluster, LayerArrays, allocation_rates, device_times,
                              layer_arrays_numpy)
from jaxsplit.solvers import DEVICE_MAJOR_BLOCK, closed_form_split, equal_split, solve_device_major_arrays

__all__ = ["Catalogue", "unique_layers", "build_catalogue", "SPLIT_RULES", "LAYER_FIELDS", "TABLE_FIELDS",
           "RequestLatency"]

#: Split rules that turn shares into an execution time.
SPLIT_RULES: dict[str, Callable] = {"closed_form": closed_form_split, "equal": equal_split}


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
    """Unique layer rows of a model, in first-occurrence order, and their multiplicities.

    ``name`` is a model spec (:mod:`jaxsplit.models`: a zoo name, ``NAME@HxW``, a PyTorch file or
    torchvision model); ``input_size`` (H, W) is the size of a spec that gives none.
    Returns (rows (u, 8) float64 with columns :data:`LAYER_FIELDS`, counts (u,) float64).
    """
    cols = layer_arrays_numpy(model_specs.resolve(name, input_size), bytes_per_element, np.float64)
    table = np.stack([cols[f] for f in LAYER_FIELDS], axis=1)
    uniq, first, inverse = np.unique(table, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    counts = np.bincount(inverse.reshape(-1), minlength=len(uniq)).astype(np.float64)
    return uniq[order], counts[order]


def build_catalogue(models: Sequence[str], input_size: tuple[int, int], bytes_per_element: float,
                    dtype) -> Catalogue:
    """Pad the unique-layer tables of ``models`` (specs, :mod:`jaxsplit.models`) to one length; see
    :class:`Catalogue`."""
    tables = [unique_layers(m, input_size, bytes_per_element) for m in models]
    width = max(len(t[0]) for t in tables)
    fields = list(LAYER_FIELDS)
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


class RequestLatency:
    """Execution time E (s) of inference requests of a model catalogue on N devices.

    Static settings (they fix the shapes of the jitted code):
      models: catalogue, K = len(models): model specs (:mod:`jaxsplit.models`), zoo names such as
        ``"vgg16"``, ``"vgg16@160x192"``, ``"net.py:make@224"`` or ``"torchvision:resnet18"``; kept as
        given in ``models``.
      input_size: (H, W) of every request whose spec gives no size.
      bytes_per_element: q.
      num_devices: N.
      split: split rule, "closed_form" (default) or "equal" (:data:`SPLIT_RULES`).
      dtype: float dtype of the catalogue and the results (default: JAX's default float, float32
        unless x64).

    Attributes: ``catalogue`` (:class:`Catalogue`), ``num_models`` K, ``num_devices`` N, ``split``,
    ``dtype``, ``chunk`` (layer-instances solved together in :meth:`exec_times`) and ``num_flat`` T
    (unique layers of all models together, the length of the reference tables).

    Every method is traceable, jittable and ``vmap``-able; the cluster is a
    :class:`~jaxsplit.latency.Cluster` with fields (N,) (device 0 local: bandwidth inf, latency 0).
    """

    def __init__(self, models: Sequence[str], input_size: tuple[int, int], bytes_per_element: float,
                 num_devices: int, split: str = "closed_form", dtype=None):
        models = tuple(models)
        if not models:
            raise ValueError("field 'models': the catalogue is empty")
        for m in models:
            model_specs.check(m)  # the form, before any input size or trace (one line naming the spec)
        try:
            height, width = input_size
            sized = all(int(s) == s and s >= 1 for s in (height, width))
        except (TypeError, ValueError):
            sized = False
        if not sized:
            raise ValueError(f"field 'input_size': must be two positive integers (H, W), got {input_size!r}")
        if not (np.isfinite(bytes_per_element) and bytes_per_element > 0):
            raise ValueError(f"field 'bytes_per_element': must be positive and finite, got {bytes_per_element!r}")
        if int(num_devices) != num_devices or num_devices < 1:
            raise ValueError(f"field 'num_devices': must be a positive integer, got {num_devices!r}")
        if split not in SPLIT_RULES:
            raise ValueError(f"field 'split': unknown split rule {split!r}; known: {', '.join(SPLIT_RULES)}")
        self.models = models
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.bytes_per_element = float(bytes_per_element)
        self.num_devices = int(num_devices)
        self.split = split
        self.dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
        self.catalogue: Catalogue = build_catalogue(models, self.input_size, self.bytes_per_element, self.dtype)
        self.num_models = len(models)
        self.num_flat = int(self.catalogue.flat_model.shape[0])
        self._split_fn = SPLIT_RULES[split]
        #: layer-instances solved together in :meth:`exec_times` (one device-major block)
        self.chunk = max(256, DEVICE_MAJOR_BLOCK // self.num_devices)
        self._exec_time = self._batched_exec_time()

    def layer_latency(self, layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
        """Latency (s) of one layer under the split rule; layer fields scalar, cluster fields and
        ``share`` (N,); returns a scalar."""
        rows = self._split_fn(layer, cluster, share)
        return jnp.max(device_times(layer, allocation_rates(cluster, share), rows))

    def exec_time(self, cluster: Cluster, share: jax.Array, model: jax.Array) -> jax.Array:
        """E: latency (s) of one request of ``model`` alone under ``share`` (N,), every layer split.

        Shapes: cluster fields and ``share`` (N,), ``model`` int32 scalar; returns a scalar. Under
        ``vmap`` (environments, candidate allocations) the whole batch is solved as one flat list
        of the requests' layers (:meth:`exec_times`), not one padded table per request.
        """
        return self._exec_time(cluster, share, model)

    def _batched_exec_time(self):
        """``exec_time`` as a ``custom_vmap`` function whose batching rule calls :meth:`exec_times`.

        Only the innermost ``vmap`` takes the rule; an outer one (a population of agents) batches
        the rule's body as usual, so the outer axis stays a plain leading axis (shardable)."""

        @custom_vmap
        def one(cluster: Cluster, share: jax.Array, model: jax.Array) -> jax.Array:
            return self.exec_times(jax.tree.map(lambda f: f[None], cluster), share[None], model[None])[0]

        @one.def_vmap
        def many(axis_size: int, in_batched, cluster: Cluster, share: jax.Array, model: jax.Array):
            def full(x, batched):
                return x if batched else jnp.broadcast_to(x, (axis_size,) + jnp.shape(x))

            cluster_b, share_b, model_b = in_batched
            cluster = jax.tree.map(full, cluster, cluster_b)
            return self.exec_times(cluster, full(share, share_b), full(model, model_b)), True

        return one

    def exec_times(self, cluster: Cluster, share: jax.Array, model: jax.Array) -> jax.Array:
        """E of a batch of requests: cluster fields and ``share`` (B, N), ``model`` (B,); returns (B,) s.

        The requests' unique layers are laid end to end (request b owns ``size[model[b]]``
        consecutive positions) and solved a chunk of :attr:`chunk` positions at a time, so the work
        is the layers the requests really have (about 18 per request for the default catalogue),
        not B times the longest model (31). Each chunk gathers its layers, clusters and shares,
        solves them device-major (:func:`jaxsplit.solvers.solve_device_major_arrays`, the batched
        closed form: same rows as a one-layer solve), and adds count x layer latency to its request.

        On the CPU, with the closed form, the compiled kernel (:mod:`jaxsplit.kernels`) does all of
        this in one pass (same rows; the sum over a request's layers in layer order).
        """
        if self.split == "closed_form" and kernels.supports(self.num_devices):
            return kernels.on_cpu(self._kernel_exec_times, self._array_exec_times, cluster, share, model)
        return self._array_exec_times(cluster, share, model)

    def _kernel_exec_times(self, cluster: Cluster, share: jax.Array, model: jax.Array) -> jax.Array:
        """:meth:`exec_times` by the compiled closed-form kernel (CPU; same rows, one pass)."""
        cat = self.catalogue
        # the kernel reads the table's columns by position: stack them in TABLE_FIELDS order
        columns = {name: getattr(cat.layers, name) for name in LAYER_FIELDS} | {"count": cat.count}
        table = jnp.stack([columns[name] for name in TABLE_FIELDS], axis=-1).reshape(-1, len(TABLE_FIELDS))
        return kernels.kernel_exec_times(table, cat.size, cluster, share, model)

    def _array_exec_times(self, cluster: Cluster, share: jax.Array, model: jax.Array) -> jax.Array:
        """:meth:`exec_times` as array code (any platform)."""
        cat = self.catalogue
        batch = share.shape[0]
        width = cat.count.shape[1]
        sizes = cat.size[model]
        ends = jnp.cumsum(sizes)
        starts = ends - sizes
        total = ends[-1]
        chunk = min(self.chunk, batch * width)
        flat_layers = jax.tree.map(lambda a: a.reshape(-1), cat.layers)
        flat_count = cat.count.reshape(-1)
        positions = jnp.arange(chunk, dtype=ends.dtype)

        def add_chunk(c, acc):
            pos = c * chunk + positions
            owner = jnp.minimum(jnp.searchsorted(ends, pos, side="right"), batch - 1)
            idx = model[owner] * width + jnp.clip(pos - starts[owner], 0, width - 1)
            layer = jax.tree.map(lambda a: a[idx], flat_layers)
            part = jax.tree.map(lambda f: f[owner], cluster)
            latency = self._layer_latencies(layer, part, share[owner])
            weight = jnp.where(pos < total, flat_count[idx], 0.0)
            return acc + jax.ops.segment_sum(latency * weight, owner, num_segments=batch)

        chunks = (total + chunk - 1) // chunk
        return jax.lax.fori_loop(0, chunks, add_chunk, jnp.zeros((batch,), self.dtype))

    def _layer_latencies(self, layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
        """Latency (s) of P layer-instances under the split rule: layer fields (P,), cluster fields
        and shares (P, N); returns (P,)."""
        if self.split == "closed_form":
            rows = solve_device_major_arrays(layer, cluster, share)
        else:
            rows = jax.vmap(self._split_fn)(layer, cluster, share)
        rates = jax.vmap(allocation_rates)(cluster, share)
        return jnp.max(jax.vmap(device_times)(layer, rates, rows), axis=-1)

    def reference_times(self, cluster: Cluster, share: jax.Array | None = None) -> jax.Array:
        """E_ref(k) for every model, all shares 1 (or ``share`` (N,), e.g. 1 on the devices present and
        0 elsewhere); (K,) seconds."""
        ones = jnp.ones((self.num_devices,), self.dtype) if share is None else share
        per_layer = jax.vmap(self.layer_latency, in_axes=(0, None, None))(self.catalogue.flat_layers, cluster, ones)
        onehot = jax.nn.one_hot(self.catalogue.flat_model, self.num_models, dtype=self.dtype)
        return (per_layer * self.catalogue.flat_count) @ onehot

    def reference_chunk(self, cluster: Cluster, count: jax.Array, chunk: int,
                        share: jax.Array | None = None) -> jax.Array:
        """Contribution to E_ref (K,) s of the flat reference layers ``count * chunk`` to
        ``(count + 1) * chunk - 1`` (those past T count 0), all shares 1 (or ``share`` (N,)).

        ``count`` is an int32 scalar (may be traced), ``chunk`` a static positive int; the
        contributions of count = 0, 1, ... up to ``ceil(T / chunk) - 1`` add up to
        :meth:`reference_times`, so E_ref can be accumulated a few layers per step."""
        idx = count * chunk + jnp.arange(chunk)
        valid = idx < self.num_flat
        idx = jnp.minimum(idx, self.num_flat - 1)
        layers = jax.tree.map(lambda a: a[idx], self.catalogue.flat_layers)
        ones = jnp.ones((self.num_devices,), self.dtype) if share is None else share
        per_layer = jax.vmap(self.layer_latency, in_axes=(0, None, None))(layers, cluster, ones)
        weight = jnp.where(valid, self.catalogue.flat_count[idx], 0.0)
        onehot = jax.nn.one_hot(self.catalogue.flat_model[idx], self.num_models, dtype=self.dtype)
        return (per_layer * weight) @ onehot

    def __repr__(self) -> str:
        return (f"RequestLatency(models={self.models}, input_size={self.input_size}, "
                f"bytes_per_element={self.bytes_per_element}, num_devices={self.num_devices}, "
                f"split={self.split!r}, dtype={self.dtype})")
