"""Solve many instances at once: every (instance, layer) pair in one vmapped, jitted call.

Instances may differ in their number of layers and devices. Devices are padded to the largest N
with share 0 (they take no rows; device order is kept), and the flattened batch is padded to a power
of two so that repeated calls with similar sizes reuse one compiled program.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from .instance import Instance, check_instance
from .latency import LAYER_FIELDS, Cluster, LayerArrays, layer_arrays_numpy, layer_latency
from .solvers import HOST_SOLVERS, batched_solver, get_solver


@dataclasses.dataclass(frozen=True)
class Plan:
    """The split of one instance: ``rows`` (L, N) int, per-layer ``latencies`` (L,) in seconds."""

    names: tuple[str, ...]
    rows: np.ndarray
    latencies: np.ndarray

    @property
    def latency(self) -> float:
        """Request latency: the sum of the layer latencies (s)."""
        return float(np.sum(self.latencies))


def _bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


_batched_latency = jax.jit(jax.vmap(layer_latency))


def flatten(instances: list[Instance], dtype=np.float32) -> tuple[LayerArrays, Cluster, np.ndarray, int]:
    """Stack every (instance, layer) pair: LayerArrays (B,), Cluster (B, N_max), shares (B, N_max).

    Returns the arrays padded to a power-of-two batch and the number of real rows."""
    n_max = max(inst.num_devices for inst in instances)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in LAYER_FIELDS}
    devs = []
    for inst in instances:
        for k, v in layer_arrays_numpy(inst.layers, inst.bytes_per_element, np.float64).items():
            cols[k].append(v)
        f, b, t, a = inst.cluster_arrays()
        pad = n_max - len(f)
        f, b, t, a = (np.concatenate([f, np.full(pad, 1.0)]), np.concatenate([b, np.full(pad, np.inf)]),
                      np.concatenate([t, np.zeros(pad)]), np.concatenate([a, np.zeros(pad)]))
        devs.append(np.broadcast_to(np.stack([f, b, t, a]), (len(inst.layers), 4, n_max)))
    flat = {k: np.concatenate(v) for k, v in cols.items()}
    dev = np.concatenate(devs)
    real = dev.shape[0]
    size = _bucket(real)
    if size > real:  # repeat the first row as padding; results are dropped
        flat = {k: np.concatenate([v, np.repeat(v[:1], size - real)]) for k, v in flat.items()}
        dev = np.concatenate([dev, np.repeat(dev[:1], size - real, axis=0)])
    layers = LayerArrays(**{k: jnp.asarray(v, dtype) for k, v in flat.items()})
    cluster = Cluster(*(jnp.asarray(dev[:, i], dtype) for i in range(3)))
    return layers, cluster, jnp.asarray(dev[:, 3], dtype), real


def solve_instances(instances: list[Instance], solver: str = "closed_form") -> list[Plan]:
    """Split every layer of every instance with ``solver``; one vmapped call for the whole batch."""
    get_solver(solver)
    if not instances:
        return []
    for k, inst in enumerate(instances):  # instances built in Python skip the parser's checks
        check_instance(inst, f"instance {k}: " if len(instances) > 1 else "")
    layers, cluster, share, real = flatten(instances)
    if solver in HOST_SOLVERS:
        take = lambda a: a[:real]  # noqa: E731 - the host solver needs no padding
        layers, cluster, share = jax.tree.map(take, layers), jax.tree.map(take, cluster), share[:real]
    rows = batched_solver(solver)(layers, cluster, share)
    lat = np.asarray(_batched_latency(layers, cluster, share, rows), np.float64)[:real]
    rows = np.asarray(rows)[:real]
    plans, at = [], 0
    for inst in instances:
        n_layers = len(inst.layers)
        plans.append(Plan(tuple(l.name or f"{l.kind}{i}" for i, l in enumerate(inst.layers)),
                          rows[at:at + n_layers, :inst.num_devices], lat[at:at + n_layers]))
        at += n_layers
    return plans


# --------------------------------------------------------------------------- plans of MODEL.md section 7
@dataclasses.dataclass(frozen=True)
class SegmentPlan:
    """The plan of one instance (MODEL.md section 7): ``segments`` as printed (``layers`` a half-open
    range of layer indices, ``partition``, ``split`` per device, ``latency`` s) and the request
    ``latency`` (s)."""

    names: tuple[str, ...]
    segments: tuple[dict, ...]
    latency: float

    def to_json(self) -> str:
        """The instance's result as one line of strict JSON: ``{"latency": s, "segments": [...]}``."""
        try:
            return json.dumps({"latency": self.latency, "segments": list(self.segments)}, allow_nan=False)
        except ValueError:
            raise RuntimeError(f"non-finite latency in a plan: {self.latency!r}") from None


_PLANNERS: dict = {}


def _planned(structure: tuple, planner_obj, plan: str, rule: str):
    """One jitted, vmapped planner per graph structure, plan and rule: (arrays, cluster, share) -> result."""
    key = (structure, plan, rule)
    if key not in _PLANNERS:
        def one(arrays, cluster, share):
            return planner_obj.with_arrays(arrays).plan(plan, cluster, share, rule)

        _PLANNERS[key] = jax.jit(jax.vmap(one))
    return _PLANNERS[key]


def plan_instances(instances: list[Instance], plan: str = "fused", solver: str = "closed_form") -> list[SegmentPlan]:
    """The ``plan`` (:data:`jaxsplit.planner.PLANS` but ``layer``) of every instance, ``solver`` inside each
    segment where the plan takes a rule. Instances of one graph structure and device count run as one
    vmapped call (padded to a power of two), so a batch of one model compiles once."""
    from . import planner as planner_mod

    if plan not in planner_mod.PLANS or plan == "layer":
        raise ValueError(f"field 'plan': unknown plan {plan!r}; known: {', '.join(planner_mod.PLANS)}")
    if plan == "fused" and solver not in planner_mod.SEGMENT_RULES:
        raise ValueError(f"field 'solver': {solver!r} does not split a fused segment; with --plan fused use one of "
                         f"{', '.join(planner_mod.SEGMENT_RULES)}")
    if plan in ("aofl", "deepthings") and solver != "closed_form":
        raise ValueError(f"field 'solver': {solver!r} with the {plan} plan, which has its own split rule; leave "
                         f"--solver out")
    for k, inst in enumerate(instances):
        check_instance(inst, f"instance {k}: " if len(instances) > 1 else "")
    groups: dict = {}
    planners = []
    for k, inst in enumerate(instances):
        p = planner_mod.Planner(inst.layers, inst.bytes_per_element, jnp.float32)
        planners.append(p)
        groups.setdefault((p.structure, inst.num_devices), []).append(k)
    out: list[SegmentPlan | None] = [None] * len(instances)
    for (structure, num), members in groups.items():
        first = planners[members[0]]
        size = _bucket(len(members))
        chosen = members + [members[0]] * (size - len(members))
        arrays = jax.tree.map(lambda *xs: jnp.stack(xs), *(planners[k].arrays for k in chosen))
        cols = [instances[k].cluster_arrays() for k in chosen]
        f, b, t, a = (np.stack([c[i] for c in cols]) for i in range(4))
        cluster = Cluster(jnp.asarray(f, jnp.float32), jnp.asarray(b, jnp.float32), jnp.asarray(t, jnp.float32))
        result = jax.device_get(_planned(structure, first, plan, solver)(arrays, cluster, jnp.asarray(a, jnp.float32)))
        for row, k in enumerate(members):
            one = jax.tree.map(lambda x: x[row], result)
            names = tuple(l.name or f"{l.kind}{i}" for i, l in enumerate(instances[k].layers))
            out[k] = SegmentPlan(names, tuple(planners[k].segments(one)), float(one.latency))
    return out  # type: ignore[return-value]
