"""The search space of a sweep: which traced settings vary, over which range or list.

A dimension is written ``NAME=LOW:HIGH`` (uniform), ``NAME=LOW:HIGH:log`` (log-uniform) or
``NAME=v1,v2,...`` (a list), on the command line (``--space``, repeatable) or in a TOML file::

    [space]
    lr = "1e-4:3e-3:log"
    ent_coef = [0.0, 0.01, 0.03]
    gamma = { low = 0.9, high = 0.99 }

NAME is a traced PPO setting (:data:`jaxsplit.agents.ppo.TRACED`) or a scalar parameter of the
environment that :class:`jaxsplit.envs.EnvSpec` declares (``util_weight``): both are arrays inside the
compiled training program, so every member of a population may take its own value. A static setting
(a network width, the number of environments) fixes shapes: it is fixed per sweep with its own flag.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .ppo import STATIC, TRACED, PPOConfig


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a range [low, high] (``log``: log-uniform) or a list of ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[float, ...] | None = None

    def distribution(self) -> Any:
        """The Optuna distribution of this dimension."""
        import optuna

        if self.choices is not None:
            return optuna.distributions.CategoricalDistribution(self.choices)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)

    def contains(self, value: float) -> bool:
        if self.choices is not None:
            return any(math.isclose(value, c, rel_tol=1e-6, abs_tol=1e-12) for c in self.choices)
        return self.low * (1 - 1e-6) <= value <= self.high * (1 + 1e-6) + 1e-12

    def text(self) -> str:
        """The dimension as written on the command line."""
        if self.choices is not None:
            return f"{self.name}=" + ",".join(f"{c:g}" for c in self.choices)
        return f"{self.name}={self.low:g}:{self.high:g}" + (":log" if self.log else "")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"choices": None if self.choices is None else list(self.choices)}


def searchable(env_params: Any = None) -> tuple[str, ...]:
    """The names a sweep may search: the traced PPO settings and the scalar environment parameters
    that :class:`~jaxsplit.envs.EnvSpec` declares."""
    from jaxsplit.envs import EnvSpec

    names = list(TRACED)
    if env_params is not None and dataclasses.is_dataclass(env_params):
        env_fields = {f.name for f in dataclasses.fields(env_params)}
        names += [f.name for f in dataclasses.fields(EnvSpec) if f.name in env_fields]
    return tuple(names)


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--space {name}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"--space {name}: {text!r} is not finite")
    return value


def parse_dimension(text: str) -> Dimension:
    """``NAME=LOW:HIGH[:log]`` or ``NAME=v1,v2,...``; ValueError says what is wrong."""
    name, sep, body = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name or not body.strip():
        raise ValueError(f"--space {text!r}: expected NAME=LOW:HIGH[:log] or NAME=v1,v2,...")
    body = body.strip()
    if ":" in body:
        parts = body.split(":")
        log = len(parts) == 3 and parts[2].strip().lower() == "log"
        if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
            raise ValueError(f"--space {name}: expected LOW:HIGH or LOW:HIGH:log, got {body!r}")
        return make_range(name, _number(parts[0], name), _number(parts[1], name), log)
    return make_choices(name, [_number(v, name) for v in body.split(",") if v.strip()])


def make_range(name: str, low: float, high: float, log: bool = False) -> Dimension:
    if not low < high:
        raise ValueError(f"--space {name}: the range {low:g}:{high:g} is empty or inverted (need LOW < HIGH)")
    if log and low <= 0:
        raise ValueError(f"--space {name}: a log range needs LOW > 0, got {low:g}")
    return Dimension(name, float(low), float(high), bool(log))


def make_choices(name: str, values: Sequence[float]) -> Dimension:
    if not values:
        raise ValueError(f"--space {name}: the list of values is empty")
    values = tuple(dict.fromkeys(float(v) for v in values))
    return Dimension(name, min(values), max(values), False, values)


def load_space_file(path: str | Path) -> list[Dimension]:
    """The ``[space]`` table of a TOML file (see the module docstring)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as err:
        raise ValueError(f"--space-file {str(path)!r}: cannot read it ({err.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--space-file {str(path)!r}: not TOML ({err})") from None
    tables = [k for k, v in data.items() if isinstance(v, dict)]
    if "space" not in data and tables:  # (a file of top-level NAME = ... lines alone is its own space)
        found = ", ".join(f"[{k}]" for k in tables)
        raise ValueError(f"--space-file {str(path)!r}: no [space] table (found {found}); put the searched "
                         f"settings under [space], e.g. lr = \"1e-4:3e-3:log\"")
    table = data.get("space", data)
    if not isinstance(table, dict) or not table:
        raise ValueError(f"--space-file {str(path)!r}: needs a [space] table of NAME = range or list")
    dims = []
    for name, value in table.items():
        if isinstance(value, str):
            dims.append(parse_dimension(f"{name}={value}"))
        elif isinstance(value, list):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ValueError(f"--space-file {name}: a list must hold numbers, got {value!r}")
            dims.append(make_choices(name, [_number(str(v), name) for v in value]))
        elif isinstance(value, dict) and {"low", "high"} <= set(value) and set(value) <= {"low", "high", "log"}:
            dims.append(make_range(name, _number(str(value["low"]), name), _number(str(value["high"]), name),
                                   bool(value.get("log", False))))
        else:
            raise ValueError(f"--space-file {name}: expected \"LOW:HIGH[:log]\", a list, or "
                             f"{{low, high[, log]}}, got {value!r}")
    return dims


def check_space(dims: Sequence[Dimension], env_params: Any = None) -> None:
    """ValueError for an unknown name, a static setting, a repeated name, or an out-of-domain range."""
    known = searchable(env_params)
    seen: set[str] = set()
    for d in dims:
        if d.name in seen:
            raise ValueError(f"--space {d.name}: given twice")
        seen.add(d.name)
        if d.name in STATIC:
            raise ValueError(f"--space {d.name}: a static setting (it fixes shapes or loop lengths, so one compiled "
                             f"population cannot vary it); fix it for the sweep with --{d.name.replace('_', '-')}; "
                             f"searchable: {', '.join(known)}")
        if d.name not in known:
            raise ValueError(f"--space {d.name}: unknown setting; searchable: {', '.join(known)}")
        if d.name in TRACED:  # the same domain PPOConfig.validate checks
            for value in (d.choices if d.choices is not None else (d.low, d.high)):
                try:
                    dataclasses.replace(PPOConfig(), **{d.name: value}).validate()
                except ValueError as err:
                    raise ValueError(f"--space {d.name}: value {value:g} is outside its domain ({err})") from None
