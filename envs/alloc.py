"""The allocation environment of MODEL.md section 6, gymnax-style, in pure JAX.

A stream of CNN inference requests (Poisson arrivals, rate lambda; model k with probability p_k)
arrives at the coordinator (device 0). For each request the agent picks shares a in [0, 1]^N of the
devices' resources; the closed-form split of every layer under these shares gives the execution time
E; the request starts when every device has a_i free (in arrival order, reservation table of M
slots) and its latency is the wait plus E.

This module holds the queue dynamics; E and the reference latencies E_ref come from the request
latency engine :class:`jaxsplit.catalogue.RequestLatency` (``env.engine``), which holds the
catalogue and the split rules.

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

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# SPLIT_RULES, Catalogue and LAYER_FIELDS: re-exported
from jaxsplit.catalogue import SPLIT_RULES, Catalogue, RequestLatency  # noqa: F401
from jaxsplit.latency import LAYER_FIELDS, Cluster, LayerArrays  # noqa: F401

from . import draws, parameters, reservations, spaces
# the observation's constants, importable from here as well
from .observation import OBS_CLIP, OBSERVATIONS, SETS_DEVICE, SETS_GLOBALS, SETS_SLOT, Observer  # noqa: F401
from .observation import free_shares as _free_shares
from .references import EpisodeReferences, RequestTimes
from .reservations import SHARE_TOLERANCE  # noqa: F401
#: What the latency in the reward is divided by. "model" (MODEL.md section 6): E_ref(k) of the
#: request's model, so every request weighs alike relative to its own size. "mean": the mix-weighted
#: mean E_ref of the episode, one constant per episode, so an episode's return is minus its total
#: latency in units of E_ref-mean and maximising it minimises the mean latency in seconds (the metric
#: of the evaluation). The two differ: with "model" a small model waiting behind a large one costs
#: many times its own E_ref, and running two requests side by side on half shares scores better than
#: one at a time even where it is slower in seconds.
REWARD_SCALES = ("model", "mean")
#: How a request's execution time E is planned: "layer" (MODEL.md section 3, every layer split on
#: its own) or "fused" (section 7: fused segments and channel splits, :mod:`jaxsplit.plan_engine`).
PLANNERS = ("layer", "fused")
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
    Presence (MODEL.md section 6, "Presence and churn"):
      devices_min, devices_max: the number of devices of an episode, an integer drawn uniformly in
        [devices_min, devices_max] per episode (devices 0 .. n - 1 take part, the others are absent);
        default N to N (every device, every episode).
      churn: rate at which a device of the episode other than the coordinator leaves, per device and
        per mean reference time E_ref-mean of the episode (default 0: no churn).
      rejoin: rate at which a device that left comes back, in the same unit (default 0).
    Fixed cluster (used instead of the ranges when ``fixed_cluster`` is True):
      fixed_cluster: bool scalar.
      cluster_flops, cluster_bandwidth, cluster_latency: (N,) capacities (bandwidth inf = local).
      cluster_present: (N,) bool, the devices of the fixed cluster (a cluster of n < N devices is
        padded with absent ones); the fixed cluster takes no devices_min / devices_max draw.
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
    devices_min: jax.Array
    devices_max: jax.Array
    churn: jax.Array
    rejoin: jax.Array
    fixed_cluster: jax.Array
    cluster_flops: jax.Array
    cluster_bandwidth: jax.Array
    cluster_latency: jax.Array
    cluster_present: jax.Array


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
      pool: (N,) bool, the devices of this episode (the others are absent throughout).
      present: (N,) bool, the devices of the pool present now (all of the pool unless churn > 0;
        the coordinator always).
      next_cluster, next_load, next_pool: the next episode's cluster, load and devices (drawn one
        episode ahead).
      next_e_ref: (K,) E_ref of the next cluster, accumulated a few layers per step.
      plan: (K, W) int32, with the "fused" planner the episode's plan of each model (the candidate
        covering each layer, :mod:`jaxsplit.plan_engine`); (K, 1) zeros with "layer".
      next_cand: (G,) with "fused" the latencies (s) of the next cluster's candidates, accumulated a
        chunk per step; (1,) with "layer".
      next_e_layer: (K,) with "fused" the per-layer E_ref of the next cluster (the offered load is
        relative to it under either planner, so one rho is one arrival rate); (1,) with "layer".
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
    pool: jax.Array
    present: jax.Array
    next_cluster: Cluster
    next_load: jax.Array
    next_pool: jax.Array
    next_e_ref: jax.Array
    plan: jax.Array
    next_cand: jax.Array
    next_e_layer: jax.Array


def _from_engine(name: str, doc: str) -> property:
    """A read-only attribute of an :class:`AllocationEnv` that is its engine's (no copy to keep in step)."""
    return property(lambda self: getattr(self.engine, name), doc=doc)


def _from_observer(name: str, doc: str) -> property:
    """A read-only attribute of an :class:`AllocationEnv` that is its observer's."""
    return property(lambda self: getattr(self.observer, name), doc=doc)


def _check_settings(slots: int, requests: int, reward_scale: str, observation: str, planner: str) -> None:
    """Raise ValueError naming the field for an invalid static setting of :class:`AllocationEnv` (the
    engine's own settings are checked by :class:`~jaxsplit.catalogue.RequestLatency`)."""
    if int(slots) != slots or slots < 1:
        raise ValueError(f"field 'slots': must be a positive integer, got {slots!r}")
    if int(requests) != requests or requests < 1:
        raise ValueError(f"field 'requests': must be a positive integer, got {requests!r}")
    if reward_scale not in REWARD_SCALES:
        raise ValueError(f"field 'reward_scale': unknown {reward_scale!r}; known: {', '.join(REWARD_SCALES)}")
    if observation not in OBSERVATIONS:
        raise ValueError(f"field 'observation': unknown {observation!r}; known: {', '.join(OBSERVATIONS)}")
    if planner not in PLANNERS:
        raise ValueError(f"field 'planner': unknown {planner!r}; known: {', '.join(PLANNERS)}")


def _step_info(state: EnvState, out: dict[str, jax.Array], group: jax.Array, final_obs: jax.Array,
               dtype: Any) -> dict[str, jax.Array]:
    """The ``info`` of :meth:`AllocationEnv.step` for the request of ``state`` served with outcome ``out``."""
    return dict({k: out[k] for k in ("latency", "wait", "exec_time", "utilization", "invalid", "flop")},
                model=state.model, arrival=state.time,
                capacity=jnp.sum(state.cluster.flops * state.present.astype(dtype)),
                devices=jnp.sum(state.present).astype(jnp.int32), load=state.load,
                e_ref=state.e_ref[state.model], group=group, final_observation=final_obs)


class AllocationEnv:
    """The allocation environment (MODEL.md section 6). Build it with :func:`jaxsplit.envs.make`.

    Static settings:
      num_devices: N.
      slots: M, reservation table size.
      models: catalogue, K = len(models): model specs (:mod:`jaxsplit.models`: zoo names, ``NAME@HxW``,
        ``PATH.py:FACTORY[@HxW]``, ``torchvision:NAME[@HxW]``), kept as given.
      input_size: (H, W) of every request whose spec gives no size.
      requests: requests per episode (truncation; never terminated).
      split: split rule, "closed_form" (default) or "equal".
      bytes_per_element: q.
      reward_scale: what the latency in the reward is divided by, "model" (default, MODEL.md
        section 6) or "mean" (:data:`REWARD_SCALES`).
      observation: "summary" (default, MODEL.md section 6), "table" or "sets"
        (:mod:`jaxsplit.envs.observation`).
      planner: how E is planned, "layer" (default) or "fused" (:data:`PLANNERS`,
        :mod:`jaxsplit.envs.references`).

    ``engine`` (:class:`~jaxsplit.catalogue.RequestLatency`) computes E and E_ref; ``num_devices``,
    ``models``, ``input_size``, ``bytes_per_element``, ``split``, ``dtype``, ``catalogue``, ``num_models``,
    ``num_flat`` and ``chunk`` are its (read-only). ``observer``
    (:class:`~jaxsplit.envs.observation.Observer`) builds the observation; ``obs_dim``, ``layout``,
    ``model_bytes`` and ``model_layers`` are its.
    """

    def __init__(self, num_devices: int = 4, slots: int = 16, models: tuple[str, ...] = DEFAULT_MODELS,
                 input_size: tuple[int, int] = (224, 224), requests: int = 256, split: str = "closed_form",
                 bytes_per_element: float = 4.0, reward_scale: str = "model",
                 observation: str = "summary", planner: str = "layer"):
        _check_settings(slots, requests, reward_scale, observation, planner)
        # validates num_devices, models, input_size, bytes_per_element and split (ValueError names the field)
        self.engine = RequestLatency(models, input_size, bytes_per_element, num_devices, split, jnp.result_type(float))
        self.slots = int(slots)
        self.requests = int(requests)
        self.reward_scale = reward_scale
        self.observation_kind = observation
        self.planner = planner
        self.times = RequestTimes(self.engine, planner, self.requests)
        self.observer = Observer(observation, self.engine, self.slots)

    # the engine's, read by the policies, benchmarks and tests (views, not copies: one source of truth)
    num_devices = _from_engine("num_devices", "N (int).")
    models = _from_engine("models", "The catalogue's model specs as given (tuple of str).")
    input_size = _from_engine("input_size", "(H, W) ints, the size of a request whose spec gives none.")
    bytes_per_element = _from_engine("bytes_per_element", "q (float, bytes).")
    split = _from_engine("split", "The split rule (str, a key of SPLIT_RULES).")
    dtype = _from_engine("dtype", "Float dtype of the state and observations (float32 unless x64).")
    catalogue = _from_engine("catalogue", "The :class:`~jaxsplit.catalogue.Catalogue` of the models.")
    num_models = _from_engine("num_models", "K (int).")
    num_flat = _from_engine("num_flat", "T (int): unique layers of all models together (reference tables).")
    chunk = _from_engine("chunk", "Layer-instances solved together in a batched E (int).")
    # the observer's
    obs_dim = _from_observer("obs_dim", "Length of the observation vector (int).")
    layout = _from_observer("layout", "The \"sets\" observation's layout, else None.")
    model_bytes = _from_observer("model_bytes", "(K,) bytes of activations each model reads and writes.")
    model_layers = _from_observer("model_layers", "(K,) layers of each model (multiplicities counted).")
    # the request times'
    plans = property(lambda self: self.times.plans,
                     doc="The catalogue's fused plans (:class:`~jaxsplit.plan_engine.CataloguePlans`) or None.")
    ref_chunk = property(lambda self: self.times.ref_chunk, doc="Reference layers solved per step (int).")

    # ------------------------------------------------------------------ params
    def default_params(self, **overrides: Any) -> EnvParams:
        """Default :class:`EnvParams` with ``overrides``; validated (ValueError names the field).

        ``overrides``: EnvParams fields, ``load`` (fixes rho: load_min = load_max) and ``cluster=(flops,
        bandwidth, latency)`` (fixes the cluster; a cluster of fewer than N devices takes the first
        ones, the others absent). Defaults and checks: :mod:`jaxsplit.envs.parameters`."""
        values = parameters.resolve(overrides, self.num_devices, self.num_models)
        self.validate(values)
        return EnvParams(**parameters.as_arrays(values, self.dtype))

    def validate(self, values: dict[str, Any]) -> None:
        """Raise ValueError naming the field for invalid parameter values."""
        parameters.validate(values, self.num_devices, self.num_models)
        parameters.check_request_times(values, self.catalogue, self.models)

    # ------------------------------------------------------------------ sampling
    def sample_cluster(self, key: jax.Array, params: EnvParams) -> Cluster:
        """One cluster: log-uniform in the ranges, device 0 local; or the fixed one. Fields (N,)."""
        return draws.cluster(key, params, self.num_devices, self.dtype)

    def sample_pool(self, key: jax.Array, params: EnvParams) -> jax.Array:
        """The devices of an episode, (N,) bool: the first n, n uniform in [devices_min, devices_max];
        or the fixed cluster's."""
        return draws.pool(key, params, self.num_devices, self.dtype)

    def sample_load(self, key: jax.Array, params: EnvParams) -> jax.Array:
        """rho, uniform in [load_min, load_max]."""
        return draws.load(key, params, self.dtype)

    def sample_model(self, key: jax.Array, params: EnvParams) -> jax.Array:
        """A model index drawn from the mix; int32."""
        return draws.model(key, params, self.num_models)

    # ------------------------------------------------------------------ latency
    def layer_latency(self, layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
        """Latency (s) of one layer under the environment's split rule (:meth:`RequestLatency.layer_latency`)."""
        return self.engine.layer_latency(layer, cluster, share)

    def exec_time(self, cluster: Cluster, share: jax.Array, model: jax.Array) -> jax.Array:
        """E (s) of one request of ``model`` alone under ``share`` (N,); batched under ``vmap``
        (:meth:`RequestLatency.exec_time`)."""
        return self.engine.exec_time(cluster, share, model)

    def reference_times(self, cluster: Cluster, pool: jax.Array | None = None) -> jax.Array:
        """E_ref(k) for every model, share 1 on every device of ``pool`` ((N,) bool; default all) and 0
        elsewhere; (K,) seconds (:meth:`RequestLatency.reference_times`)."""
        share = None if pool is None else pool.astype(self.dtype)
        return self.engine.reference_times(cluster, share)

    # ------------------------------------------------------------------ dynamics
    def clean_action(self, action: jax.Array, params: EnvParams,
                     present: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Shares actually reserved and the invalid flag (MODEL.md section 6, step 1); an absent device
        (``present`` (N,) bool False) gets share 0 (:func:`~jaxsplit.envs.reservations.clean_action`)."""
        return reservations.clean_action(action, params.min_share, self.num_devices, self.dtype, present)

    def start_time(self, state: EnvState, share: jax.Array) -> jax.Array:
        """Earliest start (s, scalar, relative to now) with ``share`` (N,) free on every device and a
        free slot (:func:`~jaxsplit.envs.reservations.start_time`)."""
        return reservations.start_time(state.res_end, state.res_share, state.last_start, share, self.slots)

    def free_shares(self, state: EnvState) -> jax.Array:
        """The share of every device free at the backlog time b = max(now, start of the previous
        request), the earliest time the present request could start; (N,) in [0, 1]."""
        return _free_shares(state, self.dtype)

    def observation(self, state: EnvState) -> jax.Array:
        """Normalised observation (obs_dim,) in [0, OBS_CLIP] of the kind ``observation_kind``
        (:meth:`Observer.summary <jaxsplit.envs.observation.Observer.summary>`: obs_dim = 5N + K + 4,
        plus M (N + 1) with "table"; "sets": :meth:`Observer.sets <jaxsplit.envs.observation.Observer.sets>`). An absent device's entries are 0."""
        return self.observer(state)

    def _episode_state(self, key: jax.Array, cluster: Cluster, load: jax.Array, refs: EpisodeReferences,
                       pool: jax.Array, params: EnvParams) -> EnvState:
        """A new episode on ``cluster`` with the references ``refs``."""
        km, kc, kl = jax.random.split(key, 3)
        e_mean = jnp.sum(params.mix * refs.e_ref)
        rate = load / (e_mean if refs.e_layer is None else jnp.sum(params.mix * refs.e_layer))
        n, m = self.num_devices, self.slots
        return EnvState(
            cluster=cluster, load=load, rate=rate, e_ref=refs.e_ref, e_mean=e_mean,
            model=self.sample_model(km, params), res_end=jnp.zeros((m,), self.dtype),
            res_share=jnp.zeros((m, n), self.dtype), last_start=jnp.zeros((), self.dtype),
            time=jnp.zeros((), self.dtype), count=jnp.zeros((), jnp.int32), pool=pool, present=pool,
            next_cluster=self.sample_cluster(kc, params), next_load=self.sample_load(kl, params),
            # folded in, not split off, so that the other draws are those of an environment without presence
            next_pool=self.sample_pool(jax.random.fold_in(kc, 1), params),
            plan=jnp.zeros((self.num_models, 1), jnp.int32) if refs.plan is None else refs.plan,
            **self.times.blank())

    def reset(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
        """Start an episode: draw cluster, devices, load and the first request; ``(obs, state)``."""
        kc, kl, ks = jax.random.split(key, 3)
        cluster = self.sample_cluster(kc, params)
        pool = self.sample_pool(jax.random.fold_in(kc, 1), params)
        state = self._episode_state(ks, cluster, self.sample_load(kl, params), self.times.first(cluster, pool),
                                    pool, params)
        return self.observation(state), state

    def request_time(self, state: EnvState, share: jax.Array) -> jax.Array:
        """E (s) of the present request under ``share`` (N,): its model's per-layer closed form, or
        with the "fused" planner the better of that and the episode's plan split under ``share``."""
        return self.times.request_time(state, share)

    def allocate(self, state: EnvState, action: jax.Array, params: EnvParams) -> tuple[EnvState, dict[str, jax.Array]]:
        """Serve the present request with ``action`` (steps 1-6 of MODEL.md section 6), no arrival.

        Returns the state with the reservation recorded and the per-request outcome: ``share``
        (N,), ``invalid``, ``exec_time`` E, ``wait`` s, ``latency`` s + E, ``utilization`` U,
        ``reward``, ``flop`` (FLOP of the request).
        """
        share, invalid = self.clean_action(action, params, state.present)
        e = self.request_time(state, share)
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
        (bool), flop, arrival (arrival time in the episode, s), capacity (sum F_i of the present
        devices), devices (int32, present devices when the request was allocated), load, e_ref
        (E_ref of the request's model), group (the episode's load as a fraction of the load range,
        (load - load_min) / (load_max - load_min) in [0, 1], 0 when the range is a point: what a
        trainer's per-group reward statistics slice) and final_observation (the observation before
        auto-reset).
        """
        k_gap, k_model, k_reset = jax.random.split(key, 3)
        served, out = self.allocate(state, action, params)
        acc, next_refs = self.times.accumulate(state)
        gap = jax.random.exponential(k_gap, (), self.dtype) / state.rate
        cont = served.replace(
            model=self.sample_model(k_model, params), res_end=served.res_end - gap,
            last_start=served.last_start - gap, time=state.time + gap, count=state.count + 1,
            present=self.churn(jax.random.fold_in(key, 3), state, gap, params), **acc)
        truncated = cont.count >= self.requests
        fresh = self._episode_state(k_reset, state.next_cluster, state.next_load, next_refs, state.next_pool, params)
        final_obs = self.observation(cont)
        new = jax.tree.map(lambda f, c: jnp.where(truncated, f, c), fresh, cont)
        obs = jnp.where(truncated, self.observation(fresh), final_obs)
        info = _step_info(state, out, self.load_group(state.load, params), final_obs, self.dtype)
        return obs, new, out["reward"], jnp.zeros((), bool), truncated, info

    def churn(self, key: jax.Array, state: EnvState, gap: jax.Array, params: EnvParams) -> jax.Array:
        """The devices present at the next arrival, ``gap`` seconds on; (N,) bool: each device of the
        pool but the coordinator leaves at rate churn and comes back at rate rejoin per e_mean of time
        (:func:`jaxsplit.envs.draws.churn`)."""
        return draws.churn(key, state.present, state.pool, state.e_mean, gap, params, self.dtype)

    def load_group(self, load: jax.Array, params: EnvParams) -> jax.Array:
        """Where ``load`` lies in [load_min, load_max], as a fraction in [0, 1] (0 for a point range)."""
        return draws.load_group(load, params, self.dtype)

    # ------------------------------------------------------------------ spaces
    def observation_space(self, params: EnvParams | None = None) -> spaces.Box:
        """Observations: (obs_dim,) in [0, OBS_CLIP], float32 (float64 under x64); with the "sets"
        observation the space carries its :class:`~jaxsplit.envs.spaces.SetLayout`."""
        return spaces.Box(0.0, OBS_CLIP, (self.obs_dim,), self.dtype, layout=self.layout)

    def action_space(self, params: EnvParams | None = None) -> spaces.Box:
        """Actions: the shares (N,) in [0, 1], one per item of the observation's "devices" set."""
        return spaces.Box(0.0, 1.0, (self.num_devices,), jnp.float32, items="devices" if self.layout else None)

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
                f"observation={self.observation_kind!r}, planner={self.planner!r})")
