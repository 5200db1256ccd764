"""The environment as one declaration: :class:`EnvSpec`, and the named environments built from it.

An :class:`EnvSpec` names a registered problem (:mod:`jaxsplit.envs.registry`: devices, catalogue,
devices coming and going), the settings a user changes from the command line (cluster file,
catalogue, load range, split rule, reward scale, observation, episode length, utilisation weight) and
the action form the agent uses (:mod:`jaxsplit.envs.actions`). Its defaults are the main job's. Every
field left at ``None`` keeps the problem's own value; the others pass to the problem's constructor as
they are. ``jaxsplit train``, ``jaxsplit sweep`` and ``jaxsplit evaluate`` build their environment
from this dataclass, so each setting is declared here once, with its default and help (a new static
setting of the environment is one more field here).

:func:`make` builds a named environment, each an :class:`EnvSpec` (:func:`named`):
``alloc-main-v0`` is the main job's (``EnvSpec()``: the reward over the episode's mean reference
time, the reservation table in the observation, one (cap, floor) rule per request), and
``alloc-v0`` the paper's plain model (MODEL.md section 6: the reward over each request's own
reference time, the summary observation, one share per device as the action), as are the other
registered problems under their own names.

>>> from jaxsplit import envs
>>> env, params = envs.EnvSpec(models="vgg16,resnet18").make()
>>> env.action_space(params)
Discrete(n=15, dtype=<class 'jax.numpy.int32'>)
>>> envs.make("alloc-main-v0")[0].obs_dim, envs.make("alloc-v0")[0].obs_dim
(108, 28)
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Literal

from jaxsplit import models, settings

from .actions import ShareAction, wrap_action
from . import registry
from .alloc import AllocationEnv

#: metadata of a field holding a comma-separated list (the command line takes ``a,b`` and ``a b``)
LIST = {"list": True}


def load_cluster(path: str | Path, field: str = "cluster") -> tuple[list[float], list[float], list[float]]:
    """(flops, bandwidth, latency) of a JSON file ``{"devices": [...]}`` in the instance format
    (shares ignored; ``bandwidth: null`` is a local device). ValueError names the file and field."""
    from jaxsplit.instance import parse_devices

    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except OSError as err:
        raise ValueError(f"field {field!r}: cannot read {str(path)!r}: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"field {field!r}: {str(path)!r} is not JSON: {type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]}") from None
    if not isinstance(obj, dict) or "devices" not in obj:
        raise ValueError(f"field {field!r}: {str(path)!r} needs an object with a 'devices' list")
    devices = parse_devices(obj["devices"], f"{path}: ", shares=False)
    bw = [math.inf if d.bandwidth is None else float(d.bandwidth) for d in devices]
    return [float(d.flops) for d in devices], bw, [float(d.latency) for d in devices]


def parse_models(text: str, field: str = "models", check: bool = True) -> tuple[str, ...]:
    """A comma-separated list of model specs (:mod:`jaxsplit.models`), each checked unless ``check`` is
    False; ValueError when empty or when a spec is malformed (one line naming the field and the spec).

    A spec is ``NAME`` (a zoo model at the environment's input size), ``NAME@H`` / ``NAME@HxW`` (a
    zoo model at H x H / H x W), ``PATH.py:FACTORY[@HxW]`` (the torch module ``FACTORY()`` returns)
    or ``torchvision:NAME[@HxW]``; the last two are read by the PyTorch bridge (the ``torch`` extra).
    Returns the specs as written, e.g. ``"resnet50,vgg16@160x192"`` -> ``("resnet50", "vgg16@160x192")``.
    """
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    if not names:
        raise ValueError(f"field {field!r}: empty list of models {text!r}")
    for name in names if check else ():
        try:
            models.check(name)
        except ValueError as err:  # check() names 'models'; this list may come from another option
            msg = str(err)
            raise ValueError(f"field {field!r}" + msg[len("field 'models'"):] if msg.startswith("field 'models'")
                             else msg) from None
    return names


def _parse_range(text: str, field: str, cast: type, lowest: str, ok) -> tuple[Any, Any]:
    """``LO,HI`` (or one value for LO = HI) of ``cast`` values with ``ok(LO)`` and LO <= HI; ValueError
    naming ``field`` otherwise (``lowest`` says the bound, e.g. "0 <")."""
    kind = " (integers)" if cast is int else ""
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"field {field!r}: expected LO,HI{kind}, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(ok(v) for v in values) or values[0] > values[1]:
        raise ValueError(f"field {field!r}: expected LO,HI with {lowest} LO <= HI, got {text!r}")
    return values[0], values[1]


def parse_loads(text: str, field: str = "loads") -> tuple[float, float]:
    """``LO,HI`` (or one value ``X`` for LO = HI = X): the range of offered load drawn per episode."""
    return _parse_range(text, field, float, "0 <", lambda v: math.isfinite(v) and v > 0)


def parse_devices(text: str, field: str = "devices") -> tuple[int, int]:
    """``LO,HI`` (or ``N`` for LO = HI = N): the range of the number of devices drawn per episode."""
    return _parse_range(text, field, int, "1 <=", lambda v: v >= 1)


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """The environment and action of a training run (defaults: the main job's)."""

    env: str = "alloc-v0"
    """registered problem whose devices, catalogue and churn the environment takes (alloc-v0 and alloc-main-v0:
    4 devices, alloc-n8-v0: 8, alloc-n2-v0: 2, alloc-equal-v0: 4 with the equal split; alloc-any-v0: the
    generalist's, 2 to 8 devices per episode under churn, any catalogue); the options below give the form"""
    cluster: str | None = None
    """JSON file {"devices": [...]} in the instance format: train on this fixed cluster (its length sets N)"""
    models: str | None = dataclasses.field(default=None, metadata=LIST)
    """comma-separated catalogue of model specs (unset: the environment's): NAME (zoo model at the input size),
    NAME@H or NAME@HxW (zoo model at that size), PATH.py:FACTORY[@HxW] (the torch module FACTORY() returns) or
    torchvision:NAME[@HxW]; the last two are read by the PyTorch bridge and need the torch extra"""
    loads: str | None = dataclasses.field(default=None, metadata=LIST)
    """offered load range LO,HI drawn per episode (unset: the environment's; traced)"""
    split: Literal["closed_form", "equal"] | None = None
    """split rule inside the environment (equal: the ablation; unset: the environment's, closed_form)"""
    planner: Literal["layer", "fused"] = "layer"
    """how a request's execution time is planned: layer (every layer split on its own and gathered at the
    coordinator, MODEL.md section 3) or fused (fused segments and channel splits, section 7: the episode's
    best plan of each model split again under the request's shares, or the per-layer plan where faster)"""
    reward_scale: Literal["mean", "model"] = "mean"
    """latency in the reward divided by the episode's mean E_ref (mean: the return is minus the total latency,
    so maximising it minimises the mean latency) or by the request's model's E_ref (model: MODEL.md)"""
    observation: Literal["summary", "table", "sets"] | None = None
    """what the policy sees: summary (MODEL.md: per device the free share and its next release), table (the
    same plus the whole reservation table) or sets (one item per device and per reservation, the request
    by its model's work: any device count up to N, any catalogue); unset: the environment's (sets for
    alloc-any-v0), else table"""
    requests: int | None = None
    """requests per episode (unset: the environment's)"""
    util_weight: float | None = None
    """utilisation weight of the reward (unset: the environment's; traced)"""
    devices: str | None = dataclasses.field(default=None, metadata=LIST)
    """devices per episode LO,HI (or one value N), drawn per episode, at most the environment's N; the others
    are absent (unset: the environment's, all of them; traced)"""
    churn: float | None = None
    """rate at which a device leaves, per device and per mean reference time E_ref-mean (unset: the
    environment's; 0 none; traced)"""
    rejoin: float | None = None
    """rate at which a device that left comes back, same unit (unset: the environment's; traced)"""
    action: Literal["per_device", "common", "free_clip", "clip_pairs", "shares"] = "clip_pairs"
    """per_device: one share per device; common: one share on every device; free_clip: a cap and a floor,
    every device gives its free share clipped to them; clip_pairs: one choice among the (cap, floor) pairs;
    shares: the environment's own action, the N shares as given (the paper's plain model: no wrapper, the
    distribution and the levels unused)"""
    distribution: Literal["beta", "categorical"] = "categorical"
    """beta: a continuous action (Box), rounded to the share levels; categorical: a discrete action over the levels"""
    share_levels: int = 4
    """share levels 0, 1/K, ..., 1/2, 1 (K = this; 0 keeps continuous shares as they are)"""
    pair_levels: tuple[float, ...] = (0.1, 0.25, 1 / 3, 0.5, 1.0)
    """share levels of the clip_pairs pairs, each in (0, 1] (empty: the nonzero share levels; other actions
    ignore it)"""

    def overrides(self) -> dict[str, Any]:
        """The keyword overrides of :func:`jaxsplit.envs.make` (ValueError names a bad field)."""
        if isinstance(self.share_levels, bool) or not isinstance(self.share_levels, int) or self.share_levels < 0:
            raise ValueError(f"field 'share_levels': must be a non-negative integer (0: continuous shares), "
                             f"got {self.share_levels!r}")
        for i, level in enumerate(self.pair_levels):
            if not (isinstance(level, (int, float)) and math.isfinite(level) and 0 < level <= 1):
                raise ValueError(f"field 'pair_levels[{i}]': must be in (0, 1], got {level!r}")
        problem = self.problem()
        known = registry.settings_of(problem) if problem in registry.registered() else {}  # else build() refuses it
        observation = self.observation or known.get("observation", "table")
        out: dict[str, Any] = {"reward_scale": self.reward_scale, "observation": observation}
        if self.cluster is not None:
            out["cluster"] = load_cluster(self.cluster)
        if self.models is not None:
            out["models"] = parse_models(self.models)
        if self.loads is not None:
            out["load_min"], out["load_max"] = parse_loads(self.loads)
        if self.devices is not None:
            out["devices_min"], out["devices_max"] = parse_devices(self.devices)
        for f in dataclasses.fields(self):  # every other setting passes as it is (a new field included)
            if f.name not in _READ and getattr(self, f.name) is not None:
                out[f.name] = getattr(self, f.name)
        return out

    def problem(self) -> str:
        """The registered problem of ``env`` (a named environment's, e.g. alloc-v0 for alloc-main-v0)."""
        return named(MAIN).env if self.env == MAIN else self.env

    def base(self, **extra: Any) -> tuple[Any, Any]:
        """The environment without the action wrapper, and its params; ``extra`` overrides win."""
        try:
            return registry.build(self.problem(), **{**self.overrides(), **extra})
        except ValueError as err:  # build() names its argument 'name'; here it is the 'env' option
            text = str(err)
            if text.startswith("field 'name'"):
                raise ValueError("field 'env'" + text[len("field 'name'"):]) from None
            raise

    def wrap(self, env: Any) -> ShareAction | AllocationEnv:
        """``env`` with this spec's action form (``env`` itself for ``shares``)."""
        if self.action == "shares":
            return env
        levels = tuple(self.pair_levels) if self.action == "clip_pairs" else ()
        return wrap_action(env, self.action, self.distribution == "categorical", self.share_levels, levels)

    def make(self, **extra: Any) -> tuple[ShareAction | AllocationEnv, Any]:
        """The wrapped environment (its ``action_space`` is the agent's) and its params."""
        env, params = self.base(**extra)
        return self.wrap(env), params

    def to_json(self) -> dict[str, Any]:
        return settings.to_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EnvSpec":
        return settings.from_json(cls, data, "environment")


#: the fields :meth:`EnvSpec.overrides` reads itself (every other field passes to the problem as it is)
_READ = frozenset({"env", "cluster", "models", "loads", "devices", "reward_scale", "observation", "action",
                   "distribution", "share_levels", "pair_levels"})

#: the named environment of the main job (``jaxsplit train`` with no option)
MAIN = "alloc-main-v0"

#: the form of the paper's plain model (MODEL.md section 6), as EnvSpec fields: the reward over each
#: request's own reference time, the summary observation (for a problem that declares none), the N
#: shares as the action
PLAIN = {"reward_scale": "model", "observation": "summary", "action": "shares"}


def registered() -> list[str]:
    """The names :func:`make` accepts: :data:`MAIN` and every registered problem."""
    return sorted({MAIN, *registry.registered()})


def named(name: str) -> EnvSpec:
    """The :class:`EnvSpec` of a named environment: for :data:`MAIN` the declaration's defaults
    (``EnvSpec()``, read when asked), for a registered problem the problem in the :data:`PLAIN` form
    (its own observation kept where it declares one: "sets" for alloc-any-v0). ValueError names 'name'
    for an unknown one."""
    if name == MAIN:
        return EnvSpec()
    if name not in registry.registered():
        raise ValueError(f"field 'name': unknown environment {name!r}; known: {', '.join(registered())}")
    observation = registry.settings_of(name).get("observation", PLAIN["observation"])
    return EnvSpec(env=name, **{**PLAIN, "observation": observation})


def make(name: str = "alloc-v0", **overrides: Any) -> tuple[ShareAction | AllocationEnv, Any]:
    """Build a named environment and its default params: ``named(name).make(**overrides)``.

    ``make("alloc-main-v0")`` is the main job's environment, ``EnvSpec().make()`` (its action the
    (cap, floor) choice of the clip_pairs wrapper); ``make("alloc-v0")`` the paper's plain model, an
    :class:`~jaxsplit.envs.alloc.AllocationEnv` whose action is the N shares; every other registered
    problem in the plain form under its own name (alloc-n8-v0, alloc-n2-v0, alloc-equal-v0,
    alloc-any-v0).

    ``overrides`` may set static settings (num_devices, slots, models, input_size, requests, split,
    bytes_per_element, reward_scale, observation), any :class:`EnvParams` field, ``load`` (fixes rho:
    load_min = load_max) and ``cluster=(flops, bandwidth, latency)`` (fixes the cluster; each (N,),
    bandwidth inf = local). A fixed cluster sets ``num_devices`` from its length unless given, except
    with the "sets" observation, whose environment keeps its N and takes the cluster's devices as the
    first present ones (a cluster of at most N devices).

    >>> env, params = make("alloc-n8-v0", models=("vgg16", "resnet18"), load=0.9)
    >>> env.num_devices, env.obs_dim
    (8, 46)
    """
    spec = named(name)
    try:
        return spec.make(**overrides)
    except ValueError as err:  # the spec's 'env' is this function's 'name'
        text = str(err)
        if text.startswith("field 'env'"):
            raise ValueError("field 'name'" + text[len("field 'env'"):]) from None
        raise
