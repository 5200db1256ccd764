"""The allocation environment of MODEL.md section 6, gymnax-style, in pure JAX.

A stream of CNN inference requests (Poisson arrivals, rate lambda; model k with probability p_k)
arrives at the coordinator (device 0). For each request the agent picks shares a in [0, 1]^N of the
devices' resources; the closed-form split of every layer under these shares gives the execution time
E; the request starts when every device has a_i free (in arrival order, reservation table of M
slots) and its latency is the wait plus E.

Conventions (gymnax 1.0): ``reset(key, params) -> (obs, state)``, ``step(key, state, action,
params) -> (obs, state, reward, terminated, truncated, info)``, with auto-reset inside ``step`` and
``info["final_observation"]``. :class:`EnvParams` holds traced floats (vmap over many clusters and
loads); the shape-fixing settings (N, M, catalogue, requests per episode, split rule) are static
attributes of :class:`AllocationEnv`.

Times inside the state are relative to the arrival of the request now waiting for its allocation
(the present is t = 0), so float32 keeps full precision over arbitrarily long episodes.

Action handling: NaN and +-inf count as 0, then values are clipped to [0, 1]; shares below
``min_share`` become 0; if nothing remains the request gets ``min_share`` on device 0 and the step is
flagged invalid (penalised by ``invalid_penalty``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.custom_batching import custom_vmap

from jaxsplit import kernels
from jaxsplit.latency import Cluster, LayerArrays, allocation_rates, device_times
from jaxsplit.solvers import DEVICE_MAJOR_BLOCK, closed_form_split, equal_split, solve_device_major_arrays

from .catalogue import Catalogue, build_catalogue

#: Tolerance on the sum of reserved shares per device (float round-off of "take what is free").
SHARE_TOLERANCE = 1e-5
#: Observation features are clipped to [0, OBS_CLIP].
OBS_CLIP = 10.0
#: Split rules the environment can use to turn shares into an execution time.
SPLIT_RULES: dict[str, Callable] = {"closed_form": closed_form_split, "equal": equal_split}
#: What the latency in the reward is divided by (see :class:`AllocationEnv`).
REWARD_SCALES = ("model", "mean")
#: What the observation holds (see :meth:`AllocationEnv.observation`).
OBSERVATIONS = ("summary", "table")
#: Default catalogue (MODEL.md section 6 defaults): four CNNs spanning 0.3 to 15.5 GMAC.
DEFAULT_MODELS = ("vgg16", "resnet18", "mobilenet_v2", "alexnet")


@struct.dataclass
class EnvParams:
    """Traced environment parameters (scalars unless noted); vmap over them for many environments.

    Cluster ranges (drawn log-uniformly per episode, device 0 is the local coordinator with
    infinite bandwidth and zero message latency):
      flops_min, flops_max: F_i range (FLOP/s); default 5 to 100 GFLOP/s (edge CPUs to small GPUs).
      bandwidth_min, bandwidth_max: B_i range (bytes/s); default 100 Mbit/s to 2 Gbit/s
        (Wi-Fi to wired Gigabit-plus links).
      latency_min, latency_max: tau_i range (s); default 0.2 to 5 ms per message (LAN to Wi-Fi).
    Load:
      load_min, load_max: rho range, drawn uniformly per episode; default 0.2 to 1.5 (light load up
        to 1.5 times what the whole-cluster policy sustains).
    Reward:
      util_weight: w_util, weight of the request utilisation U (default 0.2).
      invalid_penalty: penalty of an invalid (all-zero) allocation (default 1.0).
      min_share: shares below it become 0 (default 0.05).
    Catalogue:
      mix: (K,) model probabilities p_k (sum 1).
    Fixed cluster (used instead of the ranges when ``fixed_cluster`` is True):
      fixed_cluster: bool scalar.
      cluster_flops, cluster_bandwidth, cluster_latency: (N,) capacities (bandwidth inf = local).
    """

    flops_min: jax.Array
    flops_max: jax.Array
    bandwidth_min: jax.Array
    bandwidth_max: jax.Array
    latency_min: jax.Array
    latency_max: jax.Array
    load_min: jax.Array
    load_max: jax.Array
    util_weight: jax.Array
    invalid_penalty: jax.Array
    min_share: jax.Array
    mix: jax.Array
    fixed_cluster: jax.Array
    cluster_flops: jax.Array
    cluster_bandwidth: jax.Array
    cluster_latency: jax.Array


@struct.dataclass
class EnvState:
    """State of one environment. Times in seconds, relative to the present arrival (t = 0).

    Attributes:
      cluster: this episode's capacities, fields (N,).
      load: rho of this episode (scalar).
      rate: lambda, arrivals per second (scalar).
      e_ref: (K,) E_ref(k), latency of each model alone on the whole cluster (s).
      e_mean: mix-weighted mean of e_ref (s).
      model: int32 model of the request now waiting for its allocation.
      res_end: (M,) end times of the reservations (<= 0: released).
      res_share: (M, N) shares of the reservations.
      last_start: start time of the previous request (0 at the start of an episode).
      time: arrival time of the present request since the episode started (s).
      count: int32 requests allocated so far in this episode.
      next_cluster, next_load: the next episode's cluster and load (drawn one episode ahead).
      next_e_ref: (K,) E_ref of the next cluster, accumulated a few layers per step.
    """

    cluster: Cluster
    load: jax.Array
    rate: jax.Array
    e_ref: jax.Array
    e_mean: jax.Array
    model: jax.Array
    res_end: jax.Array
    res_share: jax.Array
    last_start: jax.Array
    time: jax.Array
    count: jax.Array
    next_cluster: Cluster
    next_load: jax.Array
    next_e_ref: jax.Array


def _positive(name: str, value: float) -> None:
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"field {name!r}: must be positive and finite, got {value!r}")


class AllocationEnv:
    """The allocation environment (MODEL.md section 6). Build it with :func:`jaxsplit.envs.make`.

    Static settings:
      num_devices: N.
      slots: M, reservation table size.
      models: catalogue (zoo names), K = len(models).
      input_size: (H, W) of every request.
      requests: requests per episode (truncation; never terminated).
      split: split rule, "closed_form" (default) or "equal".
      bytes_per_element: q.
      reward_scale: what the latency in the reward is divided by. "model" (default, MODEL.md
        section 6): E_ref(k) of the request's model, so every request weighs alike relative to its
        own size. "mean": the mix-weighted mean E_ref of the episode, one constant per episode, so an
        episode's return is minus its total latency in units of E_ref-mean and maximising it
        minimises the mean latency in seconds (the metric of the evaluation). The two differ: with
        "model" a small model waiting behind a large one costs many times its own E_ref, and running
        two requests side by side on half shares scores better than one at a time even where it is
        slower in seconds.
      observation: "summary" (default, MODEL.md section 6): per device the free share and the time to
        its next release, plus the cluster, backlog, request and load features. "table": the same,
        followed by the whole reservation table (M rows: remaining time and shares of every
        reservation still held at the backlog time, longest first), so that a policy can see how the
        present reservations will drain, not only the first release per device.
    """

    def __init__(self, num_devices: int = 4, slots: int = 16, models: tuple[str, ...] = DEFAULT_MODELS,
                 input_size: tuple[int, int] = (224, 224), requests: int = 256, split: str = "closed_form",
                 bytes_per_element: float = 4.0, reward_scale: str = "model",
                 observation: str = "summary"):
        if int(num_devices) != num_devices or num_devices < 1:
            raise ValueError(f"field 'num_devices': must be a positive integer, got {num_devices!r}")
        if int(slots) != slots or slots < 1:
            raise ValueError(f"field 'slots': must be a positive integer, got {slots!r}")
        if int(requests) != requests or requests < 1:
            raise ValueError(f"field 'requests': must be a positive integer, got {requests!r}")
        if split not in SPLIT_RULES:
            raise ValueError(f"field 'split': unknown split rule {split!r}; known: {', '.join(SPLIT_RULES)}")
        if reward_scale not in REWARD_SCALES:
            raise ValueError(f"field 'reward_scale': unknown {reward_scale!r}; known: {', '.join(REWARD_SCALES)}")
        if observation not in OBSERVATIONS:
            raise ValueError(f"field 'observation': unknown {observation!r}; known: {', '.join(OBSERVATIONS)}")
        models = tuple(models)
        if not models:
            raise ValueError("field 'models': the catalogue is empty")
        from jaxsplit import zoo

        for m in models:
            if m not in zoo.ZOO_DEFAULT_SIZE:
                raise ValueError(f"field 'models': unknown model {m!r}; known: {', '.join(zoo.ZOO_DEFAULT_SIZE)}")
        _positive("bytes_per_element", bytes_per_element)
        self.num_devices = int(num_devices)
        self.slots = int(slots)
        self.models = models
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.requests = int(requests)
        self.split = split
        self.reward_scale = reward_scale
        self.observation_kind = observation
        self.bytes_per_element = float(bytes_per_element)
        self.dtype = jnp.result_type(float)
        self.catalogue: Catalogue = build_catalogue(models, self.input_size, self.bytes_per_element, self.dtype)
        self.num_models = len(models)
        self.num_flat = int(self.catalogue.flat_model.shape[0])
        #: reference layers solved per step for the next episode's E_ref
        self.ref_chunk = int(math.ceil(self.num_flat / self.requests))
        self.obs_dim = 5 * self.num_devices + self.num_models + 4
        if observation == "table":
            self.obs_dim += self.slots * (self.num_devices + 1)
        self._split_fn = SPLIT_RULES[split]
        #: layer-instances solved together in :meth:`exec_times` (one device-major block)
        self.chunk = max(256, DEVICE_MAJOR_BLOCK // self.num_devices)
        self._exec_time = self._batched_exec_time()

    # ------------------------------------------------------------------ params
    def default_params(self, **overrides: Any) -> EnvParams:
        """Default :class:`EnvParams` with ``overrides``; validated (ValueError names the field)."""
        n, k = self.num_devices, self.num_models
        values: dict[str, Any] = dict(
            flops_min=5e9, flops_max=100e9, bandwidth_min=100e6 / 8, bandwidth_max=2e9 / 8,
            latency_min=0.2e-3, latency_max=5e-3, load_min=0.2, load_max=1.5, util_weight=0.2,
            invalid_penalty=1.0, min_share=0.05, mix=np.full(k, 1.0 / k), fixed_cluster=False,
            cluster_flops=np.full(n, 1e10), cluster_bandwidth=np.concatenate([[np.inf], np.full(n - 1, 1e8)]),
            cluster_latency=np.concatenate([[0.0], np.full(n - 1, 1e-3)]))
        cluster = overrides.pop("cluster", None)
        if "load" in overrides:
            load = overrides.pop("load")
            values["load_min"] = values["load_max"] = load
        unknown = set(overrides) - set(values)
        if unknown:
            raise ValueError(f"field {sorted(unknown)[0]!r}: unknown environment parameter")
        values.update(overrides)
        if cluster is not None:
            flops, bandwidth, latency = (np.asarray(c, np.float64).reshape(-1) for c in cluster)
            values.update(fixed_cluster=True, cluster_flops=flops, cluster_bandwidth=bandwidth,
                          cluster_latency=latency)
        self.validate(values)
        dt = self.dtype
        out = {name: jnp.asarray(v, dt) for name, v in values.items() if name != "fixed_cluster"}
        out["fixed_cluster"] = jnp.asarray(bool(values["fixed_cluster"]))
        out["mix"] = out["mix"] / jnp.sum(out["mix"])
        return EnvParams(**out)

    def validate(self, values: dict[str, Any]) -> None:
        """Raise ValueError naming the field for invalid parameter values."""
        for name in ("flops_min", "flops_max", "bandwidth_min", "bandwidth_max", "load_min", "load_max",
                     "min_share"):
            _positive(name, float(values[name]))
        for name in ("latency_min", "latency_max", "util_weight", "invalid_penalty"):
            v = float(values[name])
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"field {name!r}: must be non-negative and finite, got {v!r}")
        for lo, hi in (("flops_min", "flops_max"), ("bandwidth_min", "bandwidth_max"),
                       ("latency_min", "latency_max"), ("load_min", "load_max")):
            if float(values[lo]) > float(values[hi]):
                raise ValueError(f"field {lo!r}: {values[lo]!r} is above {hi} = {values[hi]!r}")
        if float(values["min_share"]) > 1:
            raise ValueError(f"field 'min_share': must be at most 1, got {values['min_share']!r}")
        mix = np.asarray(values["mix"], np.float64)
        if mix.shape != (self.num_models,) or not np.all(np.isfinite(mix)) or np.any(mix < 0) or mix.sum() <= 0:
            raise ValueError(f"field 'mix': need {self.num_models} non-negative weights with a positive sum, got {mix!r}")
        n = self.num_devices
        f, b, t = (np.asarray(values[c], np.float64) for c in ("cluster_flops", "cluster_bandwidth", "cluster_latency"))
        if f.shape != (n,) or not np.all(np.isfinite(f)) or np.any(f <= 0):
            raise ValueError(f"field 'cluster.flops': need {n} positive finite values, got {f!r}")
        if b.shape != (n,) or np.any(np.isnan(b)) or np.any(b <= 0):
            raise ValueError(f"field 'cluster.bandwidth': need {n} positive values (inf = local), got {b!r}")
        if t.shape != (n,) or not np.all(np.isfinite(t)) or np.any(t < 0):
            raise ValueError(f"field 'cluster.latency': need {n} non-negative finite values, got {t!r}")

    # ------------------------------------------------------------------ sampling
    def sample_cluster(self, key: jax.Array, params: EnvParams) -> Cluster:
        """One cluster: log-uniform in the ranges, device 0 local; or the fixed one. Fields (N,)."""
        n = self.num_devices
        kf, kb, kt = jax.random.split(key, 3)

        def loguniform(k, lo, hi):
            u = jax.random.uniform(k, (n,), self.dtype)
            return jnp.exp(jnp.log(lo) + u * (jnp.log(hi) - jnp.log(lo)))

        flops = loguniform(kf, params.flops_min, params.flops_max)
        bandwidth = loguniform(kb, params.bandwidth_min, params.bandwidth_max).at[0].set(jnp.inf)
        latency = (params.latency_min + jax.random.uniform(kt, (n,), self.dtype)
                   * (params.latency_max - params.latency_min)).at[0].set(0.0)
        fixed = params.fixed_cluster
        return Cluster(jnp.where(fixed, params.cluster_flops, flops),
                       jnp.where(fixed, params.cluster_bandwidth, bandwidth),
                       jnp.where(fixed, params.cluster_latency, latency))

    def sample_load(self, key: jax.Array, params: EnvParams) -> jax.Array:
        """rho, uniform in [load_min, load_max]."""
        u = jax.random.uniform(key, (), self.dtype)
        return params.load_min + u * (params.load_max - params.load_min)

    def sample_model(self, key: jax.Array, params: EnvParams) -> jax.Array:
        """A model index drawn from the mix; int32."""
        return jax.random.choice(key, self.num_models, p=params.mix).astype(jnp.int32)

    # ------------------------------------------------------------------ latency
    def layer_latency(self, layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
        """Latency (s) of one layer under the environment's split rule; layer fields scalar."""
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
        fields = [getattr(cat.layers, name) for name in LayerArrays.__dataclass_fields__] + [cat.count]
        table = jnp.stack(fields, axis=-1).reshape(-1, len(fields))
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

    def reference_times(self, cluster: Cluster) -> jax.Array:
        """E_ref(k) for every model, all shares 1; (K,) seconds."""
        ones = jnp.ones((self.num_devices,), self.dtype)
        per_layer = jax.vmap(self.layer_latency, in_axes=(0, None, None))(self.catalogue.flat_layers, cluster, ones)
        onehot = jax.nn.one_hot(self.catalogue.flat_model, self.num_models, dtype=self.dtype)
        return (per_layer * self.catalogue.flat_count) @ onehot

    def _reference_chunk(self, cluster: Cluster, count: jax.Array) -> jax.Array:
        """Contribution to E_ref (K,) of the flat reference layers of step ``count``."""
        idx = count * self.ref_chunk + jnp.arange(self.ref_chunk)
        valid = idx < self.num_flat
        idx = jnp.minimum(idx, self.num_flat - 1)
        layers = jax.tree.map(lambda a: a[idx], self.catalogue.flat_layers)
        ones = jnp.ones((self.num_devices,), self.dtype)
        per_layer = jax.vmap(self.layer_latency, in_axes=(0, None, None))(layers, cluster, ones)
        weight = jnp.where(valid, self.catalogue.flat_count[idx], 0.0)
        onehot = jax.nn.one_hot(self.catalogue.flat_model[idx], self.num_models, dtype=self.dtype)
        return (per_layer * weight) @ onehot

    # ------------------------------------------------------------------ dynamics
    def clean_action(self, action: jax.Array, params: EnvParams) -> tuple[jax.Array, jax.Array]:
        """Shares actually reserved and the invalid flag (MODEL.md section 6, step 1)."""
        a = jnp.asarray(action, self.dtype).reshape(self.num_devices)
        a = jnp.where(jnp.isfinite(a), a, 0.0)
        a = jnp.clip(a, 0.0, 1.0)
        a = jnp.where(a >= params.min_share, a, 0.0)
        invalid = jnp.all(a == 0.0)
        fallback = jnp.zeros_like(a).at[0].set(params.min_share)
        return jnp.where(invalid, fallback, a), invalid

    def start_time(self, state: EnvState, share: jax.Array) -> jax.Array:
        """Earliest start s >= max(0, last_start) with ``share`` free on every device and a free slot.

        Every reservation made so far has started by then (arrival order), so the shares in use at a
        candidate time c are those of reservations with end > c; candidates are the base time and
        every release after it. Shape: scalar, seconds relative to now.
        """
        base = jnp.maximum(state.last_start, 0.0)
        cand = jnp.concatenate([base[None], jnp.maximum(state.res_end, base)])  # (M+1,)
        busy = state.res_end[None, :] > cand[:, None]  # (M+1, M)
        usage = busy.astype(self.dtype) @ state.res_share  # (M+1, N)
        ok = jnp.all(usage + share <= 1.0 + SHARE_TOLERANCE, axis=-1) & (jnp.sum(busy, axis=-1) < self.slots)
        return jnp.min(jnp.where(ok, cand, jnp.inf))

    def observation(self, state: EnvState) -> jax.Array:
        """Normalised observation (obs_dim,) in the env dtype (float32 unless x64), in [0, OBS_CLIP];
        obs_dim = 5N + K + 4, plus M (N + 1) with ``observation="table"``.

        The shares and releases are seen at the backlog time b = max(now, start of the previous
        request), the earliest time the present request could start.
        Layout: free share at b (N), log1p(time from now to each device's next release after b / e_mean) (N),
        F_i / 1e11 (N), 10 * (1 MB transfer time at B_i, s) (N), tau_i / 5 ms (N),
        log1p(b / e_mean) (1), model one-hot (K), log1p(E_ref(k) / e_mean) (1),
        log1p(work(k) / 1 GFLOP) / 4 (1), rho (1).
        With ``observation="table"`` then M rows of N + 1 (row-major), one per reservation still held at
        b, ordered by remaining time, longest first, then zero rows for the free slots:
        log1p(time from b to its end / e_mean) (1), its shares (N).
        """
        base = jnp.maximum(state.last_start, 0.0)
        busy = state.res_end > base
        used = busy.astype(self.dtype) @ state.res_share
        free = jnp.clip(1.0 - used, 0.0, 1.0)
        holds = busy[:, None] & (state.res_share > 0)
        release = jnp.min(jnp.where(holds, state.res_end[:, None], jnp.inf), axis=0)
        release = jnp.where(jnp.isfinite(release), release, 0.0)
        c = state.cluster
        scale = state.e_mean
        feats = [
            free,
            jnp.log1p(release / scale),
            c.flops / 1e11,
            10.0 * 1e6 / c.bandwidth,
            c.latency / 5e-3,
            jnp.log1p(base / scale)[None],
            jax.nn.one_hot(state.model, self.num_models, dtype=self.dtype),
            jnp.log1p(state.e_ref[state.model] / scale)[None],
            (jnp.log1p(self.catalogue.work[state.model] / 1e9) / 4.0)[None],
            state.load[None],
        ]
        if self.observation_kind == "table":
            remaining = jnp.where(busy, state.res_end - base, 0.0)
            order = jnp.argsort(-remaining, stable=True)
            rows = jnp.concatenate([jnp.log1p(remaining[order] / scale)[:, None],
                                    jnp.where(busy[order, None], state.res_share[order], 0.0)], axis=1)
            feats.append(rows.reshape(-1))
        return jnp.clip(jnp.concatenate(feats), 0.0, OBS_CLIP).astype(self.dtype)

    def _episode_state(self, key: jax.Array, cluster: Cluster, load: jax.Array, e_ref: jax.Array,
                       params: EnvParams) -> EnvState:
        km, kc, kl = jax.random.split(key, 3)
        e_mean = jnp.sum(params.mix * e_ref)
        n, m = self.num_devices, self.slots
        return EnvState(
            cluster=cluster, load=load, rate=load / e_mean, e_ref=e_ref, e_mean=e_mean,
            model=self.sample_model(km, params), res_end=jnp.zeros((m,), self.dtype),
            res_share=jnp.zeros((m, n), self.dtype), last_start=jnp.zeros((), self.dtype),
            time=jnp.zeros((), self.dtype), count=jnp.zeros((), jnp.int32),
            next_cluster=self.sample_cluster(kc, params), next_load=self.sample_load(kl, params),
            next_e_ref=jnp.zeros((self.num_models,), self.dtype))

    def reset(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
        """Start an episode: draw cluster, load and the first request; ``(obs, state)``."""
        kc, kl, ks = jax.random.split(key, 3)
        cluster = self.sample_cluster(kc, params)
        state = self._episode_state(ks, cluster, self.sample_load(kl, params), self.reference_times(cluster), params)
        return self.observation(state), state

    def allocate(self, state: EnvState, action: jax.Array, params: EnvParams) -> tuple[EnvState, dict[str, jax.Array]]:
        """Serve the present request with ``action`` (steps 1-6 of MODEL.md section 6), no arrival.

        Returns the state with the reservation recorded and the per-request outcome: ``share``
        (N,), ``invalid``, ``exec_time`` E, ``wait`` s, ``latency`` s + E, ``utilization`` U,
        ``reward``, ``flop`` (FLOP of the request).
        """
        share, invalid = self.clean_action(action, params)
        e = self.exec_time(state.cluster, share, state.model)
        start = self.start_time(state, share)
        slot = jnp.argmin(state.res_end)
        res_end = state.res_end.at[slot].set(start + e)
        res_share = state.res_share.at[slot].set(share)
        work = self.catalogue.work[state.model]
        util = jnp.clip(work / (jnp.sum(share * state.cluster.flops) * e), 0.0, 1.0)
        latency = start + e
        scale = state.e_ref[state.model] if self.reward_scale == "model" else state.e_mean
        reward = (-latency / scale + params.util_weight * util
                  - params.invalid_penalty * invalid.astype(self.dtype))
        new = state.replace(res_end=res_end, res_share=res_share, last_start=start)
        out = dict(share=share, invalid=invalid, exec_time=e, wait=start, latency=latency, utilization=util,
                   reward=reward, flop=work)
        return new, out

    def step(self, key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams):
        """One request: allocate, then the next arrival; auto-reset after ``requests`` requests.

        Returns ``(obs, state, reward, terminated, truncated, info)``; ``terminated`` is always
        False. ``info``: latency, wait, exec_time, utilization (scalars), model (int32), invalid
        (bool), flop, arrival (arrival time in the episode, s), capacity (sum F_i), load, e_ref
        (E_ref of the request's model) and final_observation (the observation before auto-reset).
        """
        k_gap, k_model, k_reset = jax.random.split(key, 3)
        served, out = self.allocate(state, action, params)
        next_e_ref = state.next_e_ref + self._reference_chunk(state.next_cluster, state.count)
        gap = jax.random.exponential(k_gap, (), self.dtype) / state.rate
        cont = served.replace(
            model=self.sample_model(k_model, params), res_end=served.res_end - gap,
            last_start=served.last_start - gap, time=state.time + gap, count=state.count + 1,
            next_e_ref=next_e_ref)
        truncated = cont.count >= self.requests
        fresh = self._episode_state(k_reset, state.next_cluster, state.next_load, next_e_ref, params)
        final_obs = self.observation(cont)
        new = jax.tree.map(lambda f, c: jnp.where(truncated, f, c), fresh, cont)
        obs = jnp.where(truncated, self.observation(fresh), final_obs)
        info = dict(latency=out["latency"], wait=out["wait"], exec_time=out["exec_time"],
                    utilization=out["utilization"], model=state.model, invalid=out["invalid"],
                    flop=out["flop"], arrival=state.time, capacity=jnp.sum(state.cluster.flops),
                    load=state.load, e_ref=state.e_ref[state.model], final_observation=final_obs)
        return obs, new, out["reward"], jnp.zeros((), bool), truncated, info

    # ------------------------------------------------------------------ spaces
    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Box bounds of the action, (N,) each: [0, 1]."""
        return np.zeros(self.num_devices, np.float32), np.ones(self.num_devices, np.float32)

    def observation_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Box bounds of the observation, (obs_dim,) each: [0, OBS_CLIP]."""
        return np.zeros(self.obs_dim, np.float32), np.full(self.obs_dim, OBS_CLIP, np.float32)

    @property
    def name(self) -> str:
        return f"alloc-n{self.num_devices}"

    def __repr__(self) -> str:
        return (f"AllocationEnv(num_devices={self.num_devices}, slots={self.slots}, models={self.models}, "
                f"requests={self.requests}, split={self.split!r}, reward_scale={self.reward_scale!r}, "
                f"observation={self.observation_kind!r})")
