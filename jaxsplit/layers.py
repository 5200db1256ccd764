"""Layer tables: the geometry of CNN layers split by output rows (MODEL.md section 1).

A CNN is an ordered list of :class:`Layer` records. Every kind uses the same record so that a table
can be compared, serialised and turned into arrays uniformly:

* ``conv``: ``in_channels`` C_in, ``out_channels`` C_out, ``kernel`` (kh, kw), ``stride`` (sh, sw),
  ``padding`` (top, bottom, left, right), ``dilation`` (dh, dw), ``groups`` g.
* ``maxpool`` / ``avgpool``: ``in_channels == out_channels`` = C, dilation (1, 1), groups 1,
  optionally ``ceil_mode``.
* ``linear``: ``in_channels`` = in_features, ``out_channels`` = out_features, a 1x1 "image" with one
  output row, so it is never split.

Sizes follow PyTorch exactly. Units: rows and elements are counts; work is FLOP (a multiply-add
counts as 2 for conv and linear; one comparison or add per window element for pools).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

from .contract import MAX_SIZE

LAYER_KINDS = ("conv", "maxpool", "avgpool", "linear")
POOL_KINDS = ("maxpool", "avgpool")


def kernel_extent(kernel: int, dilation: int) -> int:
    """Effective kernel size ``d (k - 1) + 1`` along one axis (elements)."""
    return dilation * (kernel - 1) + 1


def output_size(
    n: int, kernel: int, stride: int, pad_before: int, pad_after: int, dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Output size along one axis, PyTorch's rule (MODEL.md section 1).

    ``out = floor((n + p_before + p_after - keff) / s) + 1``; with ``ceil_mode`` the ceiling instead,
    minus one if the last window would start at or past ``n + p_before``.
    Returns a value < 1 when the (padded) input is smaller than the kernel; callers validate.
    """
    keff = kernel_extent(kernel, dilation)
    span = n + pad_before + pad_after - keff
    if span < 0:
        return 0
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= n + pad_before:
            out -= 1
        return out
    return span // stride + 1


def input_rows(
    start: int, rows: int, in_height: int, stride: int, pad_top: int, keff: int
) -> tuple[int, int]:
    """Input rows ``[lo, hi)`` (unpadded, clamped) that output rows ``[start, start + rows)`` read.

    ``lo = max(0, r s - p_top)``, ``hi = min(H, (r + n - 1) s - p_top + keff)``; ``(lo, lo)`` when
    ``rows == 0``, and ``(H, H)`` for rows that read only bottom padding (MODEL.md section 3).
    """
    # clamped to the image at both ends: rows that read only bottom padding give (H, H)
    lo = min(max(0, start * stride - pad_top), in_height)
    if rows <= 0:
        return lo, lo
    hi = min(in_height, (start + rows - 1) * stride - pad_top + keff)
    return lo, max(lo, hi)


def _pair(value: Any, field: str, where: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise ValueError(f"{where}field '{field}' must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{where}field '{field}' must be an int or a pair of ints, got {value!r}")


def _padding4(value: Any, where: str) -> tuple[int, int, int, int]:
    """Normalise padding to (top, bottom, left, right)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value, value, value)
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        if len(value) == 2:
            return (value[0], value[0], value[1], value[1])
        if len(value) == 4:
            return tuple(int(v) for v in value)  # type: ignore[return-value]
    raise ValueError(
        f"{where}field 'padding' must be an int, [ph, pw] or [top, bottom, left, right], got {value!r}"
    )


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer of a CNN layer table (MODEL.md section 1).

    Attributes:
      kind: ``"conv"``, ``"maxpool"``, ``"avgpool"`` or ``"linear"``.
      in_channels: C_in (channels for pools, in_features for linear).
      out_channels: C_out (equal to ``in_channels`` for pools, out_features for linear).
      kernel: (kh, kw) in elements.
      stride: (sh, sw) in elements.
      padding: (top, bottom, left, right) in elements.
      dilation: (dh, dw).
      groups: convolution groups g (1 for other kinds).
      ceil_mode: pools only; PyTorch's ceil rounding of the output size.
      in_height: H, input rows.
      in_width: W, input columns.
      name: a label (a module path for models read from PyTorch).
      inputs: the graph (MODEL.md section 7): the names of the earlier layers whose outputs this
        layer reads, costless nodes (residual adds, concatenations, activations) folded; ``None``
        reads the previous layer (the model input for the first), ``()`` the model input.
    """

    kind: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    ceil_mode: bool = False
    in_height: int = 1
    in_width: int = 1
    name: str = ""
    inputs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------- validation
    def validate(self, where: str = "") -> None:
        """Raise ``ValueError`` naming the first invalid field. ``where`` prefixes the message."""
        w = where
        if self.name:
            w = f"{where}layer '{self.name}': "
        if self.inputs is not None and (not isinstance(self.inputs, tuple) or not all(
                isinstance(v, str) and v for v in self.inputs)):
            raise ValueError(f"{w}field 'inputs' must be a list of layer names, got {self.inputs!r}")
        self._validate_fields(w)
        self._validate_kind(w)

    def _validate_fields(self, w: str) -> None:
        """The checks of every field on its own; ``w`` prefixes the message."""
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"{w}field 'type' must be one of {', '.join(LAYER_KINDS)}, got {self.kind!r}")
        for field in ("in_channels", "out_channels", "groups", "in_height", "in_width"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{w}field '{field}' must be a positive integer, got {value!r}")
        for field in ("kernel", "stride", "dilation"):
            value = getattr(self, field)
            if len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
                raise ValueError(f"{w}field '{field}' must be positive integers, got {list(value)!r}")
        if len(self.padding) != 4 or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in self.padding
        ):
            raise ValueError(f"{w}field 'padding' must be non-negative integers, got {list(self.padding)!r}")
        # The numeric contract (jaxsplit.contract): row indices stay exact in float32.
        for field in ("in_channels", "out_channels", "groups", "in_height", "in_width", "kernel", "stride",
                      "dilation", "padding"):
            value = getattr(self, field)
            if max(value if isinstance(value, tuple) else (value,)) > MAX_SIZE:
                raise ValueError(f"{w}field '{field}' must be at most {MAX_SIZE} (2^24 - 1), got "
                                 f"{list(value) if isinstance(value, tuple) else value!r}")
        for axis, n, p in (("height", self.in_height, self.padding[0] + self.padding[1]),
                           ("width", self.in_width, self.padding[2] + self.padding[3])):
            if n + p > MAX_SIZE:
                raise ValueError(f"{w}field 'in_{axis}' = {n} plus padding {p} must be at most {MAX_SIZE} "
                                 f"(2^24 - 1), got {n + p}")

    def _validate_kind(self, w: str) -> None:
        """The checks that depend on the layer's kind and tie fields together; ``w`` prefixes the message."""
        if self.kind == "conv":
            if self.in_channels % self.groups or self.out_channels % self.groups:
                raise ValueError(
                    f"{w}field 'groups' = {self.groups} must divide in_channels = {self.in_channels} "
                    f"and out_channels = {self.out_channels}"
                )
        else:
            if self.groups != 1:
                raise ValueError(f"{w}field 'groups' must be 1 for a {self.kind} layer, got {self.groups}")
            if self.dilation != (1, 1):
                raise ValueError(f"{w}field 'dilation' must be [1, 1] for a {self.kind} layer, got {list(self.dilation)}")
        if self.kind in POOL_KINDS and self.in_channels != self.out_channels:
            raise ValueError(f"{w}a {self.kind} layer keeps its channels: in_channels != out_channels")
        if self.kind in POOL_KINDS:
            kh, kw = self.kernel
            t, b, le, r = self.padding
            if max(t, b) > kh // 2 or max(le, r) > kw // 2:
                raise ValueError(
                    f"{w}field 'padding' = {list(self.padding)} must be at most half the kernel "
                    f"{list(self.kernel)} for a {self.kind} layer (PyTorch's rule)"
                )
        elif self.ceil_mode:
            raise ValueError(f"{w}field 'ceil_mode' applies to pooling layers only")
        if self.kind == "linear":
            if (self.kernel, self.stride, self.padding, self.in_height, self.in_width) != (
                (1, 1), (1, 1), (0, 0, 0, 0), 1, 1
            ):
                raise ValueError(f"{w}a linear layer has no kernel, stride, padding or spatial size")
        t, b, le, r = self.padding
        for axis, n, k, d, p in (
            ("height", self.in_height, self.kernel[0], self.dilation[0], t + b),
            ("width", self.in_width, self.kernel[1], self.dilation[1], le + r),
        ):
            keff = kernel_extent(k, d)
            if keff > n + p:
                raise ValueError(
                    f"{w}field 'kernel' = {list(self.kernel)} (extent {keff} with dilation {d}) is larger "
                    f"than the padded input {axis} {n} + {p} = {n + p}"
                )

    # ----------------------------------------------------------------- geometry
    @property
    def kernel_extent(self) -> tuple[int, int]:
        """Effective kernel (height, width) with dilation."""
        return (kernel_extent(self.kernel[0], self.dilation[0]), kernel_extent(self.kernel[1], self.dilation[1]))

    @property
    def out_height(self) -> int:
        """H_out, output rows."""
        return output_size(self.in_height, self.kernel[0], self.stride[0], self.padding[0],
                           self.padding[1], self.dilation[0], self.ceil_mode)

    @property
    def out_width(self) -> int:
        """W_out, output columns."""
        return output_size(self.in_width, self.kernel[1], self.stride[1], self.padding[2],
                           self.padding[3], self.dilation[1], self.ceil_mode)

    @property
    def row_work(self) -> float:
        """phi: FLOP per output row (MODEL.md section 1)."""
        kh, kw = self.kernel
        if self.kind == "conv":
            return 2.0 * self.out_width * self.out_channels * (self.in_channels // self.groups) * kh * kw
        if self.kind == "linear":
            return 2.0 * self.in_channels * self.out_channels
        return float(self.out_width * self.out_channels * kh * kw)

    @property
    def work(self) -> float:
        """Total FLOP of the layer: ``phi * H_out``."""
        return self.row_work * self.out_height

    @property
    def macs(self) -> int:
        """Multiply-accumulates (conv and linear; 0 for pools), as published model counts use."""
        kh, kw = self.kernel
        if self.kind == "conv":
            return self.out_height * self.out_width * self.out_channels * (self.in_channels // self.groups) * kh * kw
        if self.kind == "linear":
            return self.in_channels * self.out_channels
        return 0

    def input_rows(self, start: int, rows: int) -> tuple[int, int]:
        """Input rows ``[lo, hi)`` read by output rows ``[start, start + rows)``."""
        return input_rows(start, rows, self.in_height, self.stride[0], self.padding[0], self.kernel_extent[0])

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """(C_out, H_out, W_out); linear layers give (out_features, 1, 1)."""
        return (self.out_channels, self.out_height, self.out_width)

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """The instance-format object of this layer (MODEL.md section 5)."""
        if self.kind == "linear":
            d: dict[str, Any] = {"type": "linear", "in_features": self.in_channels,
                                 "out_features": self.out_channels}
        elif self.kind == "conv":
            d = {"type": "conv", "in_channels": self.in_channels, "out_channels": self.out_channels,
                 "kernel": list(self.kernel), "stride": list(self.stride), "padding": list(self.padding),
                 "dilation": list(self.dilation), "groups": self.groups,
                 "in_height": self.in_height, "in_width": self.in_width}
        else:
            d = {"type": self.kind, "channels": self.in_channels, "kernel": list(self.kernel),
                 "stride": list(self.stride), "padding": list(self.padding), "ceil_mode": self.ceil_mode,
                 "in_height": self.in_height, "in_width": self.in_width}
        if self.name:
            d["name"] = self.name
        if self.inputs is not None:
            d["inputs"] = list(self.inputs)
        return d


def conv(in_channels: int, out_channels: int, kernel: int | Sequence[int], in_height: int, in_width: int,
         stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
         dilation: int | Sequence[int] = 1, groups: int = 1, name: str = "",
         inputs: Sequence[str] | None = None) -> Layer:
    """A ``conv`` layer; ``padding`` is p, (ph, pw) or (top, bottom, left, right)."""
    return Layer("conv", in_channels, out_channels, _pair(_listify(kernel), "kernel", ""),
                 _pair(_listify(stride), "stride", ""), _padding4(_listify(padding), ""),
                 _pair(_listify(dilation), "dilation", ""), groups, False, in_height, in_width, name,
                 _inputs(inputs))


def pool(kind: str, channels: int, kernel: int | Sequence[int], in_height: int, in_width: int,
         stride: int | Sequence[int] | None = None, padding: int | Sequence[int] = 0,
         ceil_mode: bool = False, name: str = "", inputs: Sequence[str] | None = None) -> Layer:
    """A ``maxpool`` or ``avgpool`` layer; ``stride`` defaults to the kernel, as in PyTorch."""
    k = _pair(_listify(kernel), "kernel", "")
    s = k if stride is None else _pair(_listify(stride), "stride", "")
    return Layer(kind, channels, channels, k, s, _padding4(_listify(padding), ""), (1, 1), 1,
                 bool(ceil_mode), in_height, in_width, name, _inputs(inputs))


def linear(in_features: int, out_features: int, name: str = "", inputs: Sequence[str] | None = None) -> Layer:
    """A ``linear`` layer: one output row, never split."""
    return Layer("linear", in_features, out_features, name=name, inputs=_inputs(inputs))


def _inputs(inputs: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if inputs is None else tuple(inputs)


def _listify(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def layer_from_dict(obj: Any, where: str = "") -> Layer:
    """Parse one layer object of the instance format; ``ValueError`` names the bad field."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}a layer must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    name = obj.get("name", "")
    if not isinstance(name, str):
        raise ValueError(f"{where}field 'name' must be a string, got {name!r}")
    at = f"{where}layer '{name}': " if name else where
    if kind not in LAYER_KINDS:
        raise ValueError(f"{at}field 'type' must be one of {', '.join(LAYER_KINDS)}, got {kind!r}")

    def req(field: str) -> Any:
        if field not in obj:
            raise ValueError(f"{at}missing field '{field}' for a {kind} layer")
        return obj[field]

    def integer(field: str, default: Any = None) -> int:
        value = obj.get(field, default) if default is not None else req(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{at}field '{field}' must be a positive integer, got {value!r}")
        return value

    inputs = obj.get("inputs")
    if inputs is not None and (not isinstance(inputs, list) or not all(isinstance(v, str) and v for v in inputs)):
        raise ValueError(f"{at}field 'inputs' must be a list of layer names, got {inputs!r}")
    inputs = None if inputs is None else tuple(inputs)
    known = {
        "conv": {"type", "name", "in_channels", "out_channels", "kernel", "stride", "padding", "dilation",
                 "groups", "in_height", "in_width"},
        "maxpool": {"type", "name", "channels", "kernel", "stride", "padding", "ceil_mode", "in_height",
                    "in_width"},
        "linear": {"type", "name", "in_features", "out_features"},
    }
    known["avgpool"] = known["maxpool"]
    for fields_of_kind in known.values():
        fields_of_kind.add("inputs")
    unknown = sorted(set(obj) - known[kind])
    if unknown:
        raise ValueError(f"{at}unknown field '{unknown[0]}' for a {kind} layer")
    if kind == "linear":
        fields: tuple = ("linear", integer("in_features"), integer("out_features"))
        return _make(where, *fields, name=name, inputs=inputs)
    kernel = _pair(req("kernel"), "kernel", at)
    stride = _pair(obj.get("stride", list(kernel) if kind != "conv" else 1), "stride", at)
    padding = _padding4(obj.get("padding", 0), at)
    h, w = integer("in_height"), integer("in_width")
    if kind == "conv":
        return _make(where, "conv", integer("in_channels"), integer("out_channels"), kernel, stride, padding,
                     _pair(obj.get("dilation", 1), "dilation", at), integer("groups", 1), False, h, w,
                     name=name, inputs=inputs)
    ceil_mode = obj.get("ceil_mode", False)
    if not isinstance(ceil_mode, bool):
        raise ValueError(f"{at}field 'ceil_mode' must be true or false, got {ceil_mode!r}")
    c = integer("channels")
    return _make(where, kind, c, c, kernel, stride, padding, (1, 1), 1, ceil_mode, h, w, name=name, inputs=inputs)


def _make(where: str, *fields: Any, name: str, inputs: tuple[str, ...] | None = None) -> Layer:
    """Build a Layer, prefixing a validation error with the instance location."""
    try:
        return Layer(*fields, name=name, inputs=inputs)
    except ValueError as err:
        raise ValueError(f"{where}{err}") from None


def total_macs(layers: Iterable[Layer]) -> int:
    """Sum of multiply-accumulates of a table."""
    return sum(layer.macs for layer in layers)


def total_work(layers: Iterable[Layer]) -> float:
    """Sum of FLOP of a table (MODEL.md's phi * H_out per layer)."""
    return math.fsum(layer.work for layer in layers)
