"""Read a PyTorch CNN into a layer table with ``torch.fx`` and shape propagation (MODEL.md section 1).

:func:`trace` symbolically traces a module, propagates the example input's shape through it and
classifies every graph node:

* a *layer* (``Conv2d``, ``MaxPool2d``, ``AvgPool2d``, ``Linear``): one row of the layer table, with
  what is needed to execute any row range of it exactly (:class:`LayerOp`). A ``ZeroPad2d`` whose only
  user is a convolution or pool is folded into that layer's (possibly asymmetric) padding;
* a *row-local* node that costs nothing (BatchNorm in eval mode, activations, dropout, residual adds,
  channel concatenation): row ``r`` of its output depends on row ``r`` of its inputs only;
* a *global* node executed whole at the coordinator (adaptive / global pooling, flatten, reshape);
* anything else raises :class:`UnsupportedModelError` naming the node and its op.

The table lists the layers in the order the trace visits them, named by their module path.
"""

from __future__ import annotations

import contextlib
import io

import copy
import dataclasses
import operator
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from ..graph import MODEL_INPUT, canonical_inputs
from ..layers import Layer, conv as conv_layer, linear as linear_layer, pool as pool_layer


class UnsupportedModelError(ValueError):
    """The model cannot be read as a layer table (a node that is not row-local, untraceable code)."""


ROW_LOCAL_MODULES: tuple[type, ...] = (
    nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Dropout, nn.Dropout2d, nn.Identity,
    nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.ELU, nn.Hardtanh,
    nn.PReLU, nn.Mish, nn.Softplus,
)
GLOBAL_MODULES: tuple[type, ...] = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)
ROW_LOCAL_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.elu, F.dropout,
    F.sigmoid, F.tanh, F.hardtanh, F.mish, torch.relu, torch.sigmoid, torch.tanh, torch.add, torch.mul,
    torch.sub, operator.add, operator.mul, operator.sub, operator.iadd, operator.imul, torch.cat,
}
GLOBAL_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.flatten, torch.mean,
                    torch.reshape, operator.getitem}
ROW_LOCAL_METHODS = {"relu", "relu_", "sigmoid", "tanh", "add", "add_", "mul", "mul_", "contiguous",
                     "clone", "float", "double"}
GLOBAL_METHODS = {"flatten", "view", "reshape", "mean", "size", "squeeze", "unsqueeze"}
_INPLACE_FUNCTIONS = {operator.iadd: operator.add, operator.imul: operator.mul}


@dataclasses.dataclass(frozen=True)
class LayerOp:
    """One layer of the table and how to execute any range of its output rows exactly.

    Attributes:
      layer: the :class:`~jaxsplit.layers.Layer` record (padding = folded ZeroPad2d + own padding).
      node: name of the fx node whose value is the layer's output.
      input: name of the fx node whose value is the layer's input (in front of a folded ZeroPad2d).
      target: the module path (also ``layer.name``).
      zero_pad: (top, bottom, left, right) of a folded ``ZeroPad2d``, padded with zeros.
      own_pad: (top, bottom, left, right) of the module's own padding (zeros for conv, -inf for max
        pooling, excluded from the divisor of average pooling unless ``count_include_pad``).
      count_include_pad: average pooling's rule for its own padding.
      divisor_override: average pooling's fixed divisor, or None.
      folded: name of the folded ZeroPad2d node, or None.
    """

    layer: Layer
    node: str
    input: str
    target: str
    zero_pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    own_pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    count_include_pad: bool = True
    divisor_override: int | None = None
    folded: str | None = None

    @property
    def kind(self) -> str:
        return self.layer.kind


@dataclasses.dataclass
class TracedModel:
    """A traced model: the fx graph module (eval mode, no in-place ops), its layer ops and node kinds.

    Attributes:
      gm: the ``torch.fx.GraphModule`` (a deep copy of the user's module).
      ops: the layer ops in table order.
      kinds: fx node name -> ``"input"``, ``"layer"``, ``"row_local"``, ``"global"``, ``"folded"``,
        ``"constant"`` or ``"output"``.
      shapes: fx node name -> output shape for tensor-valued nodes.
      input_shape: the example input's shape (B, C, H, W).
    """

    gm: fx.GraphModule
    ops: list[LayerOp]
    kinds: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    input_shape: tuple[int, ...]

    @property
    def layers(self) -> list[Layer]:
        """The layer table (MODEL.md section 1)."""
        return [op.layer for op in self.ops]

    def nodes(self) -> dict[str, fx.Node]:
        """fx node name -> node."""
        return {n.name: n for n in self.gm.graph.nodes}

    def module(self, op: LayerOp) -> nn.Module:
        """The module that executes ``op``."""
        return self.gm.get_submodule(op.target)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _describe(node: fx.Node, gm: fx.GraphModule | None = None) -> str:
    if node.op == "call_module" and gm is not None:
        kind = type(gm.get_submodule(node.target)).__name__
        return f"node '{node.name}' (call_module {kind} at '{node.target}')"
    target = getattr(node.target, "__name__", str(node.target))
    return f"node '{node.name}' ({node.op} {target})"


def example_tensor(example_input: torch.Tensor | Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A tensor from an example input: a tensor, or a shape (C, H, W) / (B, C, H, W)."""
    if isinstance(example_input, torch.Tensor):
        x = example_input
    else:
        shape = tuple(int(s) for s in example_input)
        if len(shape) == 3:
            shape = (1, *shape)
        if len(shape) != 4 or min(shape) < 1:
            raise ValueError(f"field 'example_input' must be a shape (C, H, W) or (B, C, H, W) of positive "
                             f"integers, got {list(example_input)!r}")
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    if x.dim() != 4:
        raise ValueError(f"field 'example_input' must be a 4-D (B, C, H, W) tensor, got shape {list(x.shape)}")
    return x


def _symbolic_trace(model: nn.Module) -> fx.GraphModule:
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if hasattr(m, "inplace") and isinstance(m.inplace, bool):
            m.inplace = False
    try:
        gm = fx.symbolic_trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, ... on control flow
        first = str(err).splitlines()[0] if str(err) else ""
        raise UnsupportedModelError(f"torch.fx cannot trace the model: {type(err).__name__}: {first}") from None
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in _INPLACE_FUNCTIONS:
            node.target = _INPLACE_FUNCTIONS[node.target]
        if node.op in ("call_function", "call_method") and node.kwargs.get("inplace"):
            node.kwargs = {**node.kwargs, "inplace": False}
        if node.op == "call_method" and isinstance(node.target, str) and node.target.endswith("_") \
                and node.target[:-1] in ROW_LOCAL_METHODS:
            node.target = node.target[:-1]
    gm.recompile()
    return gm


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(int(s) for s in meta.shape)


class _NodeShapeProp(ShapeProp):
    """Shape propagation that remembers the node it failed on, so the error can name the layer."""

    failed: Optional[fx.Node] = None

    def run_node(self, n: fx.Node) -> Any:
        try:
            return super().run_node(n)
        except Exception:
            self.failed = n
            raise


def _propagate(gm: fx.GraphModule, x: torch.Tensor) -> None:
    """Propagate ``x``'s shape through ``gm``; a failure names the layer (its module) and torch's reason."""
    prop = _NodeShapeProp(gm)
    try:
        # ShapeProp prints the failing node's traceback itself before raising; the error below says it
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            prop.propagate(x)
    except Exception as err:
        cause = err.__cause__ or err
        reason = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
        where = ""
        if prop.failed is not None:
            node = prop.failed
            if node.op == "call_module":
                where = f"layer {node.target!r} ({gm.get_submodule(str(node.target))}) "
            else:
                where = f"node {node.name!r} ({getattr(node.target, '__name__', node.target)}) "
        raise UnsupportedModelError(
            f"{where}failed on input shape {list(x.shape)}: {reason}") from None


def trace(model: nn.Module, example_input: torch.Tensor | Sequence[int]) -> TracedModel:
    """Trace ``model`` and classify its nodes; see the module docstring.

    Args:
      model: a ``torch.nn.Module`` taking one (B, C, H, W) image tensor.
      example_input: an example tensor or its shape (C, H, W) / (B, C, H, W).
    Raises:
      UnsupportedModelError (a ValueError): naming the first node that is not supported and its op.
    """
    gm = _symbolic_trace(model)
    x = example_tensor(example_input, next((p.dtype for p in gm.parameters()), torch.float32))
    _propagate(gm, x)
    nodes = list(gm.graph.nodes)
    kinds: dict[str, str] = {}
    shapes = {n.name: s for n in nodes if (s := _shape(n)) is not None}
    ops: list[LayerOp] = []
    folded: dict[str, tuple[fx.Node, tuple[int, int, int, int]]] = {}  # zeropad node -> (its input, pad)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedModelError(f"the model must take exactly one input tensor, it takes {len(placeholders)}")

    for node in nodes:
        kinds[node.name] = _classify(node, gm, ops, folded)
    # A row-local node must see spatial tensors of one height (or broadcast ones).
    for node in nodes:
        if kinds[node.name] == "row_local" and node.name in shapes and len(shapes[node.name]) != 4 \
                and any(isinstance(a, fx.Node) and len(shapes.get(a.name, ())) == 4 for a in node.all_input_nodes):
            raise UnsupportedModelError(f"{_describe(node, gm)} is not supported: it changes the image layout")
    if not ops:
        raise UnsupportedModelError("the model has no Conv2d, MaxPool2d, AvgPool2d or Linear layer")
    return TracedModel(gm, _with_graph(ops, kinds, {n.name: n for n in nodes}), kinds, shapes, tuple(x.shape))


def _classify(node: fx.Node, gm: fx.GraphModule, ops: list[LayerOp],
              folded: dict[str, tuple[fx.Node, tuple[int, int, int, int]]]) -> str:
    """The kind of one traced node ("input", "output", "constant", "folded", "layer", "row_local" or
    "global"); a layer is appended to ``ops``, a folded zero padding recorded in ``folded``.
    Raises UnsupportedModelError naming the node."""
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op == "get_attr":
        return "constant"
    if node.op == "call_module":
        return _classify_module(node, gm, ops, folded)
    if node.op == "call_function":
        if node.target is torch.cat:
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            if dim not in (1, -3):
                raise UnsupportedModelError(f"{_describe(node)} is not supported: concatenation along "
                                            f"dim {dim} (only channels, dim 1, are row-local)")
        return _classify_call(node, ROW_LOCAL_FUNCTIONS, GLOBAL_FUNCTIONS)
    if node.op == "call_method":
        return _classify_call(node, ROW_LOCAL_METHODS, GLOBAL_METHODS)
    raise UnsupportedModelError(f"{_describe(node)} is not supported")  # pragma: no cover - fx has no other ops


def _classify_call(node: fx.Node, row_local, global_) -> str:
    """The kind ("row_local" or "global") of a function or method call node, by its target."""
    if node.target in row_local:
        return "row_local"
    if node.target in global_:
        return "global"
    raise UnsupportedModelError(f"{_describe(node)} is not supported: not a row-local operation")


def _classify_module(node: fx.Node, gm: fx.GraphModule, ops: list[LayerOp],
                     folded: dict[str, tuple[fx.Node, tuple[int, int, int, int]]]) -> str:
    """The kind of a ``call_module`` node (see :func:`_classify`)."""
    m = gm.get_submodule(node.target)
    if isinstance(m, nn.ZeroPad2d):
        users = list(node.users)
        ok = len(users) == 1 and users[0].op == "call_module" and isinstance(
            gm.get_submodule(users[0].target), (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))
        left, right, top, bottom = (int(p) for p in m.padding)
        if not ok:
            raise UnsupportedModelError(
                f"{_describe(node, gm)} is not supported: a ZeroPad2d must feed exactly one Conv2d, "
                f"MaxPool2d or AvgPool2d")
        if min(left, right, top, bottom) < 0:
            raise UnsupportedModelError(f"{_describe(node, gm)} is not supported: negative padding crops")
        folded[node.name] = (node.args[0], (top, bottom, left, right))
        return "folded"
    if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.Linear)):
        ops.append(_layer_op(node, m, gm, folded))
        return "layer"
    if isinstance(m, ROW_LOCAL_MODULES):
        return "row_local"
    if isinstance(m, GLOBAL_MODULES):
        return "global"
    raise UnsupportedModelError(f"{_describe(node, gm)} is not supported: not a row-local layer")


def _with_graph(ops: list[LayerOp], kinds: dict[str, str], nodes: dict[str, fx.Node]) -> list[LayerOp]:
    """The ops with their layers' ``inputs`` filled in (MODEL.md section 7): the layers each one reads,
    found by walking back from its input through the costless nodes (row-local, global, folded
    padding), which are folded."""
    index = {op.node: i for i, op in enumerate(ops)}
    preds = []
    for op in ops:
        found: set[int] = set()
        stack, seen = [op.input], set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in index:
                found.add(index[name])
            elif kinds.get(name) == "input":
                found.add(MODEL_INPUT)
            elif kinds.get(name) in ("row_local", "global", "folded"):
                stack.extend(a.name for a in nodes[name].all_input_nodes)
        preds.append(tuple(sorted(found)) or (MODEL_INPUT,))
    try:
        inputs = canonical_inputs(preds, [op.layer.name for op in ops])
    except ValueError as err:
        raise UnsupportedModelError(str(err)) from None
    return [dataclasses.replace(op, layer=dataclasses.replace(op.layer, inputs=given))
            for op, given in zip(ops, inputs)]


def _layer_op(node: fx.Node, m: nn.Module, gm: fx.GraphModule,
              folded: dict[str, tuple[fx.Node, tuple[int, int, int, int]]]) -> LayerOp:
    where = _describe(node, gm)
    src = node.args[0] if node.args else None
    if not isinstance(src, fx.Node) or len(node.args) != 1 or node.kwargs:
        raise UnsupportedModelError(f"{where} is not supported: it must take exactly one tensor argument")
    zero_pad, fold_name = (0, 0, 0, 0), None
    if src.name in folded:
        fold_name = src.name
        src, zero_pad = folded[src.name]
    in_shape = _shape(src)
    if in_shape is None:
        raise UnsupportedModelError(f"{where}: the shape of its input is unknown")
    name = str(node.target)
    if isinstance(m, nn.Linear):
        if len(in_shape) != 2:
            raise UnsupportedModelError(f"{where} is not supported: a Linear layer must follow flatten "
                                        f"(input shape {list(in_shape)})")
        return LayerOp(linear_layer(m.in_features, m.out_features, name), node.name, src.name, name)
    if len(in_shape) != 4:
        raise UnsupportedModelError(f"{where} is not supported: input shape {list(in_shape)} is not (B, C, H, W)")
    _, c, h, w = in_shape
    kh, kw = _pair(m.kernel_size)
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            raise UnsupportedModelError(f"{where} is not supported: padding_mode '{m.padding_mode}'")
        dh, dw = _pair(m.dilation)
        if isinstance(m.padding, str):
            if m.padding == "valid":
                own = (0, 0, 0, 0)
            else:  # 'same': PyTorch puts the odd element at the bottom / right
                th, tw = dh * (kh - 1), dw * (kw - 1)
                own = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            ph, pw = _pair(m.padding)
            own = (ph, ph, pw, pw)
        pad = tuple(a + b for a, b in zip(zero_pad, own))
        layer = conv_layer(c, m.out_channels, (kh, kw), h, w, _pair(m.stride), pad, (dh, dw), m.groups, name)
        return LayerOp(layer, node.name, src.name, name, zero_pad, own, folded=fold_name)
    kind = "maxpool" if isinstance(m, nn.MaxPool2d) else "avgpool"
    if kind == "maxpool" and (_pair(m.dilation) != (1, 1) or m.return_indices):
        raise UnsupportedModelError(f"{where} is not supported: dilated pooling or return_indices")
    ph, pw = _pair(m.padding)
    own = (ph, ph, pw, pw)
    stride = _pair(m.stride if m.stride is not None else m.kernel_size)
    pad = tuple(a + b for a, b in zip(zero_pad, own))
    try:
        layer = pool_layer(kind, c, (kh, kw), h, w, stride, pad, bool(m.ceil_mode), name)
    except ValueError as err:
        raise UnsupportedModelError(f"{where}: {err}") from None
    extra: dict[str, Any] = {}
    if kind == "avgpool":
        extra = {"count_include_pad": bool(m.count_include_pad), "divisor_override": m.divisor_override}
    return LayerOp(layer, node.name, src.name, name, zero_pad, own, folded=fold_name, **extra)


def from_torch(model: nn.Module, example_input: torch.Tensor | Sequence[int]) -> list[Layer]:
    """The layer table (MODEL.md section 1) of a PyTorch CNN.

    Args:
      model: a ``torch.nn.Module`` that torch.fx can trace, taking one (B, C, H, W) tensor.
      example_input: an example tensor, or its shape (C, H, W) / (B, C, H, W).
    Returns:
      The layers that cost time, in trace order, named by module path.
    Raises:
      UnsupportedModelError (a ValueError): naming the node and op that cannot be split by rows.
    """
    return trace(model, example_input).layers
