"""Frozen settings dataclasses (``PPOConfig``, ``EnvSpec``) to and from JSON.

JSON has lists where the dataclasses hold tuples (network widths, share levels); every field whose
default is a tuple is turned back into one. An unknown field is refused, naming it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def to_json(settings: Any) -> dict[str, Any]:
    """The fields of a settings dataclass as a JSON-ready dict (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()}


def from_json(cls: type[T], data: dict[str, Any], what: str) -> T:
    """``cls(**data)`` with lists back to tuples; ValueError naming an unknown field (a ``what`` setting)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"field {unknown[0]!r}: unknown {what} setting")
    out = {}
    for name, value in data.items():
        default = fields[name].default
        out[name] = tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value
    return cls(**out)
