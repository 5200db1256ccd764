"""Instances of the split problem and their JSON / JSON Lines format (MODEL.md section 5).

An instance is a layer table, a cluster with one share per device, and the bytes per transferred
element. :func:`parse_instance` validates a decoded JSON object; every error is a ``ValueError`` that
names the field, its value and (for JSON Lines) the line.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Sequence

import numpy as np

from . import contract, zoo
from .layers import Layer, layer_from_dict


@dataclasses.dataclass(frozen=True)
class Device:
    """One device: ``flops`` F (FLOP/s), ``bandwidth`` B (bytes/s, ``inf`` = local), ``latency`` tau
    (s) and ``share`` a in [0, 1]."""

    flops: float
    bandwidth: float = math.inf
    latency: float = 0.0
    share: float = 1.0


@dataclasses.dataclass(frozen=True)
class Instance:
    """A layer table on a cluster under an allocation (MODEL.md section 5)."""

    layers: tuple[Layer, ...]
    devices: tuple[Device, ...]
    bytes_per_element: float = 4.0

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def cluster_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(flops, bandwidth, latency, share), each float64 (N,)."""
        cols = [[getattr(d, f) for d in self.devices] for f in ("flops", "bandwidth", "latency", "share")]
        return tuple(np.asarray(c, np.float64) for c in cols)  # type: ignore[return-value]


def _number(value: Any, field: str, where: str, *, positive: bool = False, allow_none: bool = False,
            low: float | None = None, high: float | None = None) -> float:
    if allow_none and (value is None or (isinstance(value, float) and value == math.inf)):
        return math.inf  # null or Infinity (docs/MODEL.md section 8: "null / infinity")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}field '{field}' must be a finite number, got {value!r}")
    v = float(value)
    if positive and v <= 0:
        raise ValueError(f"{where}field '{field}' must be positive, got {value!r}")
    if low is not None and v < low:
        raise ValueError(f"{where}field '{field}' must be >= {low:g}, got {value!r}")
    if high is not None and v > high:
        raise ValueError(f"{where}field '{field}' must be <= {high:g}, got {value!r}")
    return v


def parse_devices(obj: Any, where: str = "", shares: bool = True) -> tuple[Device, ...]:
    """Validate the ``devices`` list; device 0 is the coordinator. ``shares=False`` ignores shares."""
    if not isinstance(obj, list) or not obj:
        raise ValueError(f"{where}field 'devices' must be a non-empty list, got {obj!r}")
    out = []
    for i, d in enumerate(obj):
        if not isinstance(d, dict):
            raise ValueError(f"{where}field 'devices[{i}]' must be an object, got {d!r}")
        unknown = sorted(set(d) - {"flops", "bandwidth", "latency", "share", "name"})
        if unknown:
            raise ValueError(f"{where}field 'devices[{i}].{unknown[0]}' is not a device field")
        if "flops" not in d:
            raise ValueError(f"{where}missing field 'devices[{i}].flops'")
        at = f"devices[{i}]"
        flops = _number(d["flops"], f"{at}.flops", where, positive=True)
        flops = contract.check_number(flops, f"{at}.flops", contract.MIN_CAPACITY, contract.MAX_CAPACITY,
                                      where=where)
        bandwidth = _number(d.get("bandwidth"), f"{at}.bandwidth", where, positive=True, allow_none=True)
        bandwidth = contract.check_number(bandwidth, f"{at}.bandwidth", contract.MIN_CAPACITY,
                                          contract.MAX_CAPACITY, where=where, infinite=True)
        latency = _number(d.get("latency", 0.0), f"{at}.latency", where, low=0.0)
        latency = contract.check_number(latency, f"{at}.latency", 0.0, contract.MAX_MESSAGE_LATENCY, where=where)
        share = _number(d.get("share", 1.0), f"{at}.share", where, low=0.0, high=1.0) if shares else 1.0
        share = contract.check_number(share, f"{at}.share", contract.MIN_SHARE, 1.0, where=where, zero=True)
        out.append(Device(flops, bandwidth, latency, share))
    if shares and not any(d.share > 0 for d in out):
        raise ValueError(f"{where}field 'devices': no device has a positive share")
    if len(out) > contract.MAX_DEVICES:
        raise ValueError(f"{where}field 'devices': at most {contract.MAX_DEVICES} devices, got {len(out)}")
    return tuple(out)


def parse_instance(obj: Any, line: int | None = None) -> Instance:
    """Validate one decoded instance object (MODEL.md section 5).

    Args:
      obj: the decoded JSON object.
      line: its line number in a JSON Lines file (named in errors), or None.
    Raises:
      ValueError: naming the field, its value and the line.
    """
    where = f"line {line}: " if line is not None else ""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}an instance must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - {"layers", "model", "input_size", "devices", "bytes_per_element", "name"})
    if unknown:
        raise ValueError(f"{where}unknown field '{unknown[0]}'")
    if ("layers" in obj) == ("model" in obj):
        raise ValueError(f"{where}exactly one of the fields 'layers' and 'model' must be given")
    if "model" in obj:
        name = obj["model"]
        if not isinstance(name, str):
            raise ValueError(f"{where}field 'model' must be a string, got {name!r}")
        size = obj.get("input_size")
        if size is not None and (not isinstance(size, list) or len(size) != 2):
            raise ValueError(f"{where}field 'input_size' must be [height, width], got {size!r}")
        try:
            layers = tuple(zoo.get(name, tuple(size) if size is not None else None))
        except ValueError as err:
            raise ValueError(f"{where}{err}") from None
    else:
        if "input_size" in obj:
            raise ValueError(f"{where}field 'input_size' applies only with 'model'")
        raw = obj["layers"]
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"{where}field 'layers' must be a non-empty list, got {raw!r}")
        layers = tuple(layer_from_dict(layer, f"{where}layers[{i}]: ") for i, layer in enumerate(raw))
        if any(layer.inputs is not None for layer in layers):
            from .graph import graph_of  # the graph of MODEL.md section 7: inputs earlier, shapes agreeing

            try:
                graph_of(layers)
            except ValueError as err:
                raise ValueError(f"{where}{err}") from None
    devices = parse_devices(obj.get("devices"), where)
    q = _number(obj.get("bytes_per_element", 4), "bytes_per_element", where, positive=True)
    q = contract.check_number(q, "bytes_per_element", contract.MIN_BYTES_PER_ELEMENT,
                              contract.MAX_BYTES_PER_ELEMENT, where=where)
    inst = Instance(layers, devices, q)
    check_instance(inst, where)
    return inst


def check_instance(inst: Instance, where: str = "") -> None:
    """Refuse an instance outside the numeric contract (:mod:`jaxsplit.contract`): device ranges, the
    work and bytes of each layer, and the time of any device on any whole layer and on the request.

    Raises ``ValueError`` naming the layer or device field, its value and the range."""
    if not inst.layers:
        raise ValueError(f"{where}field 'layers' must be a non-empty list, got []")
    if not inst.devices:
        raise ValueError(f"{where}field 'devices' must be a non-empty list, got []")
    if len(inst.devices) > contract.MAX_DEVICES:
        raise ValueError(f"{where}field 'devices': at most {contract.MAX_DEVICES} devices, got {len(inst.devices)}")
    for i, d in enumerate(inst.devices):
        at = f"devices[{i}]"
        contract.check_number(d.flops, f"{at}.flops", contract.MIN_CAPACITY, contract.MAX_CAPACITY, where=where)
        contract.check_number(d.bandwidth, f"{at}.bandwidth", contract.MIN_CAPACITY, contract.MAX_CAPACITY,
                              where=where, infinite=True)
        contract.check_number(d.latency, f"{at}.latency", 0.0, contract.MAX_MESSAGE_LATENCY, where=where)
        contract.check_number(d.share, f"{at}.share", contract.MIN_SHARE, 1.0, where=where, zero=True)
    if not any(d.share > 0 for d in inst.devices):
        raise ValueError(f"{where}field 'devices': no device has a positive share")
    contract.check_number(inst.bytes_per_element, "bytes_per_element", contract.MIN_BYTES_PER_ELEMENT,
                          contract.MAX_BYTES_PER_ELEMENT, where=where)
    from .latency import layer_arrays_numpy  # jax only when an instance is checked

    cols = layer_arrays_numpy(inst.layers, inst.bytes_per_element, np.float64)
    names = [layer.name or f"{layer.kind}{k}" for k, layer in enumerate(inst.layers)]
    work = cols["row_work"] * cols["out_height"]
    for label, values in (("work (FLOP)", work), ("input bytes", cols["in_row_bytes"] * cols["in_height"]),
                          ("output bytes", cols["out_row_bytes"] * cols["out_height"])):
        bad = np.flatnonzero(~(values <= contract.MAX_LAYER_WORK))
        if bad.size:
            k = int(bad[0])
            raise ValueError(f"{where}layers[{k}] ('{names[k]}'): {label} {values[k]:.3g} is above the limit "
                             f"{contract.MAX_LAYER_WORK:g}")
    f, b, t, a = inst.cluster_arrays()
    times = contract.whole_layer_times(cols, f, b, t, a)  # (L, N)
    bad = np.argwhere(~(np.isfinite(times) & (times <= contract.MAX_TIME)))
    if bad.size:
        k, i = (int(v) for v in bad[0])
        raise ValueError(f"{where}layers[{k}] ('{names[k]}') on devices[{i}] could take {times[k, i]:.3g} s, "
                         f"above the limit {contract.MAX_TIME:g} s: capacity, share or sizes out of range")
    total = float(np.sum(np.max(times, axis=1)))
    if not total <= contract.MAX_TIME:
        raise ValueError(f"{where}field 'layers': the request could take {total:.3g} s, above the limit "
                         f"{contract.MAX_TIME:g} s")


def loads(text: str, source: str = "<input>") -> list[Instance]:
    """Parse a JSON object, or JSON Lines (one object per line; blank lines skipped)."""
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"{source}: no instance found (empty input)")
    try:
        obj = json.loads(stripped)
    except json.JSONDecodeError:
        obj = None
        lines = True
    except RecursionError:
        raise ValueError(f"{source}: JSON nested too deeply") from None
    else:
        lines = False
    if not lines:
        return [parse_instance(obj)]
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        out.append(parse_line(line, number, source))
    return out


def parse_line(line: str, number: int, source: str) -> Instance:
    """One JSON Lines instance; ValueError names the source, the line and what is wrong."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: line {number}: malformed JSON: {err.msg} at column {err.colno}") from None
    except RecursionError:
        raise ValueError(f"{source}: line {number}: JSON nested too deeply") from None
    return parse_instance(obj, number)


def load(path: str) -> list[Instance]:
    """Read instances from a file path, or standard input for ``-``."""
    import sys

    try:
        if path == "-":
            return loads(sys.stdin.read(), "<stdin>")
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as err:
        raise ValueError(f"cannot read {path!r}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{'<stdin>' if path == '-' else repr(path)} is not UTF-8 text (byte {err.start}: "
                         f"{err.object[err.start:err.start + 1]!r}); an instance file is JSON") from None
    return loads(text, path)


def example_instance(model: str = "vgg16") -> dict[str, Any]:
    """An example instance object: a zoo model on a four-device edge cluster."""
    return {
        "model": model,
        "devices": [
            {"flops": 2e10, "bandwidth": None, "latency": 0.0, "share": 1.0},
            {"flops": 5e10, "bandwidth": 1.25e8, "latency": 0.002, "share": 0.5},
            {"flops": 8e10, "bandwidth": 2.5e8, "latency": 0.001, "share": 0.75},
            {"flops": 1e10, "bandwidth": 6.25e7, "latency": 0.004, "share": 1.0},
        ],
        "bytes_per_element": 4,
    }


def dumps_result(names: Sequence[str], rows: np.ndarray, latencies: np.ndarray) -> str:
    """One instance's result as a JSON line: request latency and per-layer rows and latency."""
    obj = {
        "latency": float(np.sum(latencies)),
        "layers": [{"name": n, "rows": [int(v) for v in r], "latency": float(t)}
                   for n, r, t in zip(names, rows, latencies)],
    }
    # Strict JSON: a non-finite latency is a bug inside the numeric contract, never printed.
    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:
        raise RuntimeError(f"non-finite latency in a result: {obj['latency']!r}") from None
