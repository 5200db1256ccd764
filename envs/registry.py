"""Registered problems: ``build(name, **overrides) -> (env, params)`` for the cluster sizes, catalogues and
device dynamics of each name.

A registered name fixes the problem (devices, catalogue, split rule, devices coming and going); what a
policy sees, how its reward is scaled and what it outputs is the form, declared by
:class:`jaxsplit.envs.EnvSpec`. :func:`jaxsplit.envs.make` builds a named environment, a problem in its
form (:func:`jaxsplit.envs.spec.named`).
"""

from __future__ import annotations

import inspect
from typing import Any

from .alloc import AllocationEnv, EnvParams

#: Static (shape-fixing) settings accepted by :func:`build`: the parameters of AllocationEnv's constructor
#: (num_devices, slots, models, input_size, requests, split, bytes_per_element, reward_scale, observation,
#: and any it gains); every other override is an EnvParams field.
STATIC_KEYS = tuple(name for name in inspect.signature(AllocationEnv.__init__).parameters if name != "self")

#: the training catalogue of alloc-any-v0
GENERALIST_MODELS = ("vgg16", "resnet18", "mobilenet_v2", "alexnet", "vgg16@160", "resnet18@320", "mobilenet_v2@320",
                     "alexnet@160")

_REGISTRY: dict[str, dict[str, Any]] = {
    "alloc-v0": dict(num_devices=4),
    "alloc-n8-v0": dict(num_devices=8),
    "alloc-n2-v0": dict(num_devices=2),
    "alloc-equal-v0": dict(num_devices=4, split="equal"),
    # the generalist's: up to 8 devices, 2 to 8 of them per episode, devices leaving and coming back,
    # and the request described by its model's work, over the default catalogue at three input sizes
    # (resnet50 and yolov2_tiny stay out, to evaluate it on models it never saw)
    "alloc-any-v0": dict(num_devices=8, observation="sets", devices_min=2, devices_max=8, churn=0.01, rejoin=0.1,
                         models=GENERALIST_MODELS),
}


def registered() -> list[str]:
    """Names of the registered problems (accepted by :func:`build`)."""
    return sorted(_REGISTRY)


def settings_of(name: str) -> dict[str, Any]:
    """The registered settings of ``name`` (ValueError for an unknown name)."""
    if name not in _REGISTRY:
        raise ValueError(f"field 'name': unknown environment {name!r}; known: {', '.join(registered())}")
    return dict(_REGISTRY[name])


def register(name: str, **settings: Any) -> None:
    """Register a named configuration (static settings and parameter overrides)."""
    _REGISTRY[name] = dict(settings)


def build(name: str = "alloc-v0", **overrides: Any) -> tuple[AllocationEnv, EnvParams]:
    """Build a registered problem as an AllocationEnv (no action wrapper) and its default params.

    ``overrides`` may set static settings (num_devices, slots, models, input_size, requests, split,
    bytes_per_element, reward_scale, observation), any :class:`EnvParams` field, ``load`` (fixes rho: load_min = load_max) and
    ``cluster=(flops, bandwidth, latency)`` (fixes the cluster; each (N,), bandwidth inf = local).
    A fixed cluster sets ``num_devices`` from its length unless given, except with the "sets"
    observation, whose environment keeps its N and takes the cluster's devices as the first present
    ones (a cluster of at most N devices).

    >>> env, params = build("alloc-n8-v0", models=("vgg16", "resnet18"), load=0.9)
    >>> env.num_devices, env.obs_dim
    (8, 46)
    """
    settings = settings_of(name)
    settings.update(overrides)
    if (settings.get("cluster") is not None and "num_devices" not in overrides
            and settings.get("observation") != "sets"):
        settings["num_devices"] = len(settings["cluster"][0])
    n = settings.get("num_devices")
    if n is not None:  # a registered device range wider than a smaller N given here is cut to N
        for key in ("devices_min", "devices_max"):
            if key in settings and key not in overrides and settings[key] > n:
                settings[key] = n
    static = {k: settings.pop(k) for k in STATIC_KEYS if k in settings}
    if "models" in static:
        static["models"] = tuple(static["models"])
    env = AllocationEnv(**static)
    return env, env.default_params(**settings)
