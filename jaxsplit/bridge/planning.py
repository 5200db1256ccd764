"""Models and plans for the bridge commands: load a model by name or file, split it with a solver."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..instance import Device, Instance, parse_devices
from ..layers import Layer
from ..plan import solve_instances
from . import torch_zoo


def default_devices(n: int) -> tuple[Device, ...]:
    """A heterogeneous cluster of ``n`` devices for quick checks.

    Device 0 is the coordinator (20 GFLOP/s, local); device i >= 1 has (10 + 10 i) GFLOP/s, 1 GB/s and
    0.1 ms per message, so that solvers give every device rows.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"field 'devices' must be a positive integer, got {n!r}")
    return (Device(2e10),) + tuple(Device(1e10 * (1 + i), 1e9, 1e-4) for i in range(1, n))


def load_devices(path: str) -> tuple[Device, ...]:
    """Devices from a JSON file: a list of device objects, or an object with a ``devices`` list."""
    try:
        obj = json.loads(Path(path).read_text())
    except OSError as err:
        raise ValueError(f"field 'cluster': cannot read {path!r}: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"field 'cluster': {path!r} is not valid JSON: {type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]}") from None
    if isinstance(obj, dict):
        obj = obj.get("devices")
    return parse_devices(obj, f"{path}: ", shares=True)


def load_model(spec: str, input_size: Sequence[int] | None = None, seed: int = 0) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """A model and its input shape (B, C, H, W) from a zoo name, ``torchvision:NAME`` or ``PATH.py:FACTORY``.

    ``FACTORY()`` returns the module, or ``(module, shape)`` with shape (C, H, W) or (B, C, H, W).
    ``input_size`` (H, W) overrides the height and width.
    """
    shape: tuple[int, ...]
    if spec in torch_zoo.MODELS:
        model = torch_zoo.get(spec, seed)
        shape = (1, 3, *torch_zoo.default_size(spec))
    elif spec.startswith("torchvision:"):
        try:
            import torchvision
        except ModuleNotFoundError:
            raise ValueError(f"field 'model' = {spec!r} needs torchvision, which is not installed") from None
        name = spec.split(":", 1)[1]
        if not hasattr(torchvision.models, name):
            raise ValueError(f"field 'model': torchvision has no model {name!r}")
        torch.manual_seed(seed)
        model, shape = getattr(torchvision.models, name)(weights=None).eval(), (1, 3, 224, 224)
    elif ":" in spec and spec.rsplit(":", 1)[0].endswith(".py"):
        path, factory = spec.rsplit(":", 1)
        if not Path(path).is_file():
            raise ValueError(f"field 'model': file {path!r} does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"_jaxsplit_user_{abs(hash(path))}", path)
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as err:
            raise ValueError(f"field 'model': importing {path!r} failed: {type(err).__name__}: {err}") from None
        fn = getattr(module, factory, None)
        if not callable(fn):
            raise ValueError(f"field 'model': {path!r} has no function {factory!r}")
        torch.manual_seed(seed)
        try:
            out = fn()
        except Exception as err:
            raise ValueError(f"field 'model': {factory}() in {path!r} raised {type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}") from None
        model, shape = (out if isinstance(out, tuple) else (out, None))
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"field 'model': {factory}() must return a torch.nn.Module, got {type(model).__name__}")
        if shape is None:
            if input_size is None:
                raise ValueError(f"field 'input_size' is required: {factory}() gives no input shape")
            shape = (1, 3, *input_size)
        shape = tuple(int(s) for s in shape)
        if len(shape) == 3:
            shape = (1, *shape)
    else:
        raise ValueError(f"field 'model': {spec!r} is neither a zoo model ({', '.join(torch_zoo.MODELS)}), "
                         f"torchvision:NAME nor PATH.py:FACTORY")
    if input_size is not None:
        h, w = input_size
        for field, v in (("input_size[0]", h), ("input_size[1]", w)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"field '{field}' must be a positive integer, got {v!r}")
        shape = (*shape[:2], h, w)
    return model.eval(), shape


def plan_rows(layers: Sequence[Layer], devices: Sequence[Device], solver: str = "closed_form",
              bytes_per_element: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows per device per layer (L, N) int and predicted layer latencies (L,) s, from ``solver``."""
    plan = solve_instances([Instance(tuple(layers), tuple(devices), bytes_per_element)], solver)[0]
    return np.asarray(plan.rows, np.int64), np.asarray(plan.latencies, np.float64)


def parse_range(text: str, n_layers: int) -> tuple[int, int]:
    """Parse ``A:B`` (half-open layer indices; negative counts from the end) into (first, end)."""
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        a, b = (int(p) if p else d for p, d in zip(parts, (0, n_layers)))
    except ValueError:
        raise ValueError(f"field 'fused' must be A:B (layer indices), got {text!r}") from None
    a, b = (a + n_layers if a < 0 else a), (b + n_layers if b < 0 else b)
    if not 0 <= a < b <= n_layers:
        raise ValueError(f"field 'fused' = {text!r} must be a non-empty range within 0:{n_layers}")
    return a, b

