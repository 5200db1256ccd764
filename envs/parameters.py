"""The allocation environment's parameter values (the fields of :class:`~jaxsplit.envs.alloc.EnvParams`):
their defaults, the ``load`` and ``cluster`` shorthands, and their checks.

Values are plain Python / NumPy here, keyed by EnvParams field name; every check raises ValueError
naming the field. :meth:`AllocationEnv.default_params <jaxsplit.envs.alloc.AllocationEnv.default_params>`
turns the checked values into traced arrays.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxsplit import contract
from jaxsplit.catalogue import Catalogue
from jaxsplit.latency import LAYER_FIELDS

__all__ = ["defaults", "resolve", "as_arrays", "validate", "check_request_times"]

#: boolean fields (every other field is a float of the environment's dtype)
FLAGS = ("fixed_cluster", "cluster_present")


def _positive(name: str, value: float) -> None:
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"field {name!r}: must be positive and finite, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"field {name!r}: must be non-negative and finite, got {value!r}")


def defaults(n: int, k: int) -> dict[str, Any]:
    """The default values for N = ``n`` devices and K = ``k`` models (:class:`EnvParams` documents them)."""
    return dict(
        flops_min=5e9, flops_max=100e9, bandwidth_min=100e6 / 8, bandwidth_max=2e9 / 8,
        latency_min=0.2e-3, latency_max=5e-3, load_min=0.2, load_max=1.5, util_weight=0.2,
        invalid_penalty=1.0, min_share=0.05, mix=np.full(k, 1.0 / k), devices_min=n, devices_max=n,
        churn=0.0, rejoin=0.0, fixed_cluster=False,
        cluster_flops=np.full(n, 1e10), cluster_bandwidth=np.concatenate([[np.inf], np.full(n - 1, 1e8)]),
        cluster_latency=np.concatenate([[0.0], np.full(n - 1, 1e-3)]), cluster_present=np.ones(n, bool))


def _fixed_cluster(cluster: Any, n: int) -> dict[str, Any]:
    """The fixed-cluster fields of ``cluster = (flops, bandwidth, latency)``; a cluster of fewer than
    N devices takes the first ones, the others absent."""
    flops, bandwidth, latency = (np.asarray(c, np.float64).reshape(-1) for c in cluster)
    present = np.ones(flops.shape, bool)
    if len(flops) > n:  # else reported as the padding flags' length, not as the cluster's
        raise ValueError(f"field 'cluster': {len(flops)} devices, more than the environment's {n} "
                         f"(num_devices)")
    if flops.shape == bandwidth.shape == latency.shape and 0 < len(flops) < n:
        # a smaller cluster takes the first devices; the others are absent (placeholder
        # capacities, never used: an absent device gets no share and no feature)
        pad = n - len(flops)
        flops = np.concatenate([flops, np.full(pad, 1e10)])
        bandwidth = np.concatenate([bandwidth, np.full(pad, 1e8)])
        latency = np.concatenate([latency, np.full(pad, 1e-3)])
        present = np.arange(n) < n - pad
    return dict(fixed_cluster=True, cluster_flops=flops, cluster_bandwidth=bandwidth,
                cluster_latency=latency, cluster_present=present)


def resolve(overrides: dict[str, Any], n: int, k: int) -> dict[str, Any]:
    """The defaults with ``overrides`` (EnvParams fields, ``load`` fixing rho and ``cluster`` fixing the
    cluster); unchecked but for unknown names."""
    overrides = dict(overrides)
    values = defaults(n, k)
    cluster = overrides.pop("cluster", None)
    if "load" in overrides:
        load = overrides.pop("load")
        values["load_min"] = values["load_max"] = load
    unknown = set(overrides) - set(values)
    if unknown:
        raise ValueError(f"field {sorted(unknown)[0]!r}: unknown environment parameter")
    values.update(overrides)
    if cluster is not None:
        values.update(_fixed_cluster(cluster, n))
    return values


def as_arrays(values: dict[str, Any], dtype) -> dict[str, Any]:
    """Checked ``values`` as the arrays of :class:`EnvParams`: floats of ``dtype``, the flags bool, the
    mix normalised to sum 1."""
    out = {name: jnp.asarray(v, dtype) for name, v in values.items() if name not in FLAGS}
    out["fixed_cluster"] = jnp.asarray(bool(values["fixed_cluster"]))
    out["cluster_present"] = jnp.asarray(np.asarray(values["cluster_present"], bool).reshape(-1))
    out["mix"] = out["mix"] / jnp.sum(out["mix"])
    return out


def _check_ranges(values: dict[str, Any]) -> None:
    for name in ("flops_min", "flops_max", "bandwidth_min", "bandwidth_max", "load_min", "load_max",
                 "min_share"):
        _positive(name, float(values[name]))
    for name in ("latency_min", "latency_max", "util_weight", "invalid_penalty"):
        _non_negative(name, float(values[name]))
    for lo, hi in (("flops_min", "flops_max"), ("bandwidth_min", "bandwidth_max"),
                   ("latency_min", "latency_max"), ("load_min", "load_max")):
        if float(values[lo]) > float(values[hi]):
            raise ValueError(f"field {lo!r}: {values[lo]!r} is above {hi} = {values[hi]!r}")
    if float(values["min_share"]) > 1:
        raise ValueError(f"field 'min_share': must be at most 1, got {values['min_share']!r}")


def _check_presence(values: dict[str, Any], n: int) -> None:
    for name in ("devices_min", "devices_max"):
        v = values[name]
        if isinstance(v, bool) or not (np.isfinite(float(v)) and float(v) == int(float(v)) and 1 <= float(v) <= n):
            raise ValueError(f"field {name!r}: must be an integer in [1, {n}] (the environment's device count), "
                             f"got {v!r}")
    if float(values["devices_min"]) > float(values["devices_max"]):
        raise ValueError(f"field 'devices_min': {values['devices_min']!r} is above devices_max = "
                         f"{values['devices_max']!r}")
    for name in ("churn", "rejoin"):
        v = float(values[name])
        _non_negative(name, v)
        contract.check_number(v, name, 0.0, 1e6)
    present = np.asarray(values["cluster_present"])
    if present.shape != (n,) or present.dtype != bool or not present[0]:
        raise ValueError(f"field 'cluster.present': need {n} flags with the coordinator (device 0) present, "
                         f"got {present!r}")


def _check_contract(values: dict[str, Any]) -> None:
    """The numeric contract of the latency model (jaxsplit.contract, docs/MODEL.md section 8)."""
    for name in ("flops_min", "flops_max", "bandwidth_min", "bandwidth_max"):
        contract.check_number(float(values[name]), name, contract.MIN_CAPACITY, contract.MAX_CAPACITY)
    for name in ("latency_min", "latency_max"):
        contract.check_number(float(values[name]), name, 0.0, contract.MAX_MESSAGE_LATENCY)
    contract.check_number(float(values["min_share"]), "min_share", contract.MIN_SHARE, 1.0)
    for name in ("load_min", "load_max"):
        contract.check_number(float(values[name]), name, 1e-6, 1e6)
    for name in ("util_weight", "invalid_penalty"):
        contract.check_number(float(values[name]), name, 0.0, 1e6)


def _check_mix_and_cluster(values: dict[str, Any], n: int, k: int) -> None:
    mix = np.asarray(values["mix"], np.float64)
    if mix.shape != (k,) or not np.all(np.isfinite(mix)) or np.any(mix < 0) or mix.sum() <= 0:
        raise ValueError(f"field 'mix': need {k} non-negative weights with a positive sum, got {mix!r}")
    f, b, t = (np.asarray(values[c], np.float64) for c in ("cluster_flops", "cluster_bandwidth", "cluster_latency"))
    if f.shape != (n,) or not np.all(np.isfinite(f)) or np.any(f <= 0):
        raise ValueError(f"field 'cluster.flops': need {n} positive finite values (at most {n} devices), got {f!r}")
    if b.shape != (n,) or np.any(np.isnan(b)) or np.any(b <= 0):
        raise ValueError(f"field 'cluster.bandwidth': need {n} positive values (inf = local), got {b!r}")
    if t.shape != (n,) or not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError(f"field 'cluster.latency': need {n} non-negative finite values, got {t!r}")
    for name, arr, kw in (("cluster.flops", f, {}), ("cluster.bandwidth", b, {"infinite": True})):
        for i, v in enumerate(arr):
            contract.check_number(float(v), f"{name}[{i}]", contract.MIN_CAPACITY, contract.MAX_CAPACITY, **kw)
    for i, v in enumerate(t):
        contract.check_number(float(v), f"cluster.latency[{i}]", 0.0, contract.MAX_MESSAGE_LATENCY)


def validate(values: dict[str, Any], n: int, k: int) -> None:
    """Raise ValueError naming the field for invalid ``values`` of an environment of N = ``n`` devices
    and K = ``k`` models (all but :func:`check_request_times`, which needs the catalogue)."""
    _check_ranges(values)
    _check_presence(values, n)
    _check_contract(values)
    _check_mix_and_cluster(values, n, k)


def check_request_times(values: dict[str, Any], catalogue: Catalogue, models: tuple[str, ...]) -> None:
    """Refuse parameters under which a request could take longer than the numeric contract's
    :data:`jaxsplit.contract.MAX_TIME` on the slowest device at the smallest share."""
    if bool(values["fixed_cluster"]):
        on = np.asarray(values["cluster_present"], bool)
        f, b, t = (np.asarray(values[c], np.float64)[on] for c in ("cluster_flops", "cluster_bandwidth",
                                                                    "cluster_latency"))
        worst = (float(np.min(f)), float(np.min(b)), float(np.max(t)))
    else:
        worst = (float(values["flops_min"]), float(values["bandwidth_min"]), float(values["latency_max"]))
    cols = {name: np.asarray(getattr(catalogue.flat_layers, name), np.float64) for name in LAYER_FIELDS}
    one = lambda v: np.full((1,), v)  # noqa: E731
    times = contract.whole_layer_times(cols, one(worst[0]), one(worst[1]), one(worst[2]),
                                       one(float(values["min_share"])))[:, 0]
    per_model = np.bincount(np.asarray(catalogue.flat_model),
                            weights=times * np.asarray(catalogue.flat_count, np.float64), minlength=len(models))
    k = int(np.argmax(per_model))
    if not per_model[k] <= contract.MAX_TIME:
        raise ValueError(f"field 'min_share': model {models[k]!r} could take {per_model[k]:.3g} s on the "
                         f"slowest device at share {values['min_share']!r}, above the limit "
                         f"{contract.MAX_TIME:g} s (capacities or min_share too small)")
