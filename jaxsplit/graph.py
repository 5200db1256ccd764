"""The layer graph of a table and its cut points (MODEL.md section 7).

A layer table lists the layers that cost time in topological order; each layer reads the outputs of
earlier layers (:attr:`jaxsplit.layers.Layer.inputs`, by default the previous layer). Costless nodes
(residual adds, concatenations along channels, activations, batch norm) are folded: a layer that
reads one reads that node's own inputs, so a ResNet block's first convolution reads the last
convolution of the previous block *and* that block's shortcut.

A *cut point* is a position p in 0..L (between layers p - 1 and p) where exactly one tensor is live:
every layer at or after p that reads something produced before p reads the same set of earlier
outputs (one tensor, or one costless combination of several, such as a residual sum). Fused
segments start and end at cut points; between segments that tensor is held whole at the
coordinator.

>>> from jaxsplit import graph, zoo
>>> g = graph.graph_of(zoo.get("resnet18"))
>>> g.cuts[:4]
(0, 1, 2, 4)
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from .layers import Layer

#: The index that stands for the model's input tensor in :attr:`Graph.preds`.
MODEL_INPUT = -1


def _label(layer: Layer, index: int) -> str:
    return f"layer '{layer.name}'" if layer.name else f"layer {index}"


@dataclasses.dataclass(frozen=True)
class Graph:
    """The folded graph of a table of L layers.

    Attributes:
      preds: per layer, the sorted indices of the layers it reads (:data:`MODEL_INPUT` = -1 for the
        model input).
      consumers: per layer, the sorted indices of the layers that read it.
      cuts: the cut points, sorted; always holds 0 and L.
      live: per cut point p (same order as ``cuts``), the tensors held at p: the set every reader
        after p reads from before p (``(-1,)`` at p = 0, ``(L - 1,)`` at p = L).
    """

    preds: tuple[tuple[int, ...], ...]
    consumers: tuple[tuple[int, ...], ...]
    cuts: tuple[int, ...]
    live: tuple[tuple[int, ...], ...]

    @property
    def num_layers(self) -> int:
        return len(self.preds)

    def live_at(self, position: int) -> tuple[int, ...]:
        """The tensors held at cut point ``position`` (ValueError if it is not one)."""
        try:
            return self.live[self.cuts.index(position)]
        except ValueError:
            raise ValueError(f"position {position} is not a cut point") from None

    @property
    def is_chain(self) -> bool:
        """Every layer reads the previous one only."""
        return all(p == (i - 1,) for i, p in enumerate(self.preds))


def _resolve(layers: Sequence[Layer]) -> tuple[tuple[int, ...], ...]:
    """Layer indices each layer reads; ValueError names a layer whose ``inputs`` are not earlier layers."""
    index: dict[str, int] = {}
    duplicated: set[str] = set()
    preds: list[tuple[int, ...]] = []
    for i, layer in enumerate(layers):
        if layer.inputs is None:
            preds.append((i - 1,))
        else:
            got = set()
            for name in layer.inputs:
                if name in duplicated:
                    raise ValueError(f"{_label(layer, i)}: field 'inputs' names {name!r}, which more than one "
                                     f"earlier layer is called")
                if name not in index:
                    later = any(other.name == name for other in layers[i:])
                    what = "a later layer (the table must be in topological order)" if later else "no layer"
                    raise ValueError(f"{_label(layer, i)}: field 'inputs' names {name!r}, which is {what}")
                got.add(index[name])
            preds.append(tuple(sorted(got)) if got else (MODEL_INPUT,))
        if layer.name:
            if layer.name in index:
                duplicated.add(layer.name)
            index[layer.name] = i
    return tuple(preds)


def _output_shape(layers: Sequence[Layer], j: int, in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    return in_shape if j == MODEL_INPUT else layers[j].output_shape


def _check_shapes(layers: Sequence[Layer], preds: tuple[tuple[int, ...], ...]) -> None:
    """All inputs of a layer have its input height and width, and their channels add up (a
    concatenation) or each equal its input channels (a sum); a linear layer reads through global
    pooling, so only its inputs' channels are checked against each other."""
    first = layers[0]
    in_shape = (first.in_channels, first.in_height, first.in_width)
    for i, (layer, pred) in enumerate(zip(layers, preds)):
        shapes = [_output_shape(layers, j, in_shape) for j in pred]
        names = ["the model input" if j == MODEL_INPUT else repr(layers[j].name or f"layer {j}") for j in pred]
        if layer.kind == "linear":
            if len({c for c, _, _ in shapes}) > 1:
                raise ValueError(f"{_label(layer, i)}: field 'inputs': the inputs of a linear layer must have equal "
                                 f"channels, got {[c for c, _, _ in shapes]}")
            continue
        for (c, h, w), name in zip(shapes, names):
            if (h, w) != (layer.in_height, layer.in_width):
                raise ValueError(f"{_label(layer, i)}: field 'inputs': {name} is {h}x{w}, the layer's input is "
                                 f"{layer.in_height}x{layer.in_width}")
        channels = [c for c, _, _ in shapes]
        if len(pred) > 1 and sum(channels) != layer.in_channels and any(c != layer.in_channels for c in channels):
            raise ValueError(f"{_label(layer, i)}: field 'inputs': channels {channels} neither sum to nor each "
                             f"equal in_channels = {layer.in_channels}")


def graph_of(layers: Sequence[Layer]) -> Graph:
    """The folded graph of ``layers`` and its cut points (MODEL.md section 7).

    Raises ``ValueError`` naming the layer and field for ``inputs`` that name an unknown, later or
    ambiguous layer (a cycle included), inputs whose height or width differ from the layer's input,
    or a layer other than the last whose output nobody reads.
    """
    if not layers:
        raise ValueError("field 'layers' must be a non-empty list")
    preds = _resolve(layers)
    _check_shapes(layers, preds)
    count = len(layers)
    consumers: list[list[int]] = [[] for _ in range(count)]
    for i, pred in enumerate(preds):
        for j in pred:
            if j != MODEL_INPUT:
                consumers[j].append(i)
    for j in range(count - 1):
        if not consumers[j]:
            raise ValueError(f"{_label(layers[j], j)}: its output is never read (only the last layer's output may "
                             f"be the model's output; list it in a later layer's 'inputs')")
    cuts, live = [0], [(MODEL_INPUT,)]
    for p in range(1, count):
        sets = {tuple(j for j in pred if j < p) for pred in preds[p:]}
        sets.discard(())
        if len(sets) == 1:
            cuts.append(p)
            live.append(next(iter(sets)))
    cuts.append(count)
    live.append((count - 1,))
    return Graph(preds, tuple(tuple(c) for c in consumers), tuple(cuts), tuple(live))


def canonical_inputs(preds: Sequence[Sequence[int]], names: Sequence[str]) -> list[tuple[str, ...] | None]:
    """``Layer.inputs`` values for a graph given as layer indices (-1: the model input): ``None``
    where a layer reads just the previous layer (the model input for the first), else the names of
    the layers it reads in table order (``()`` for the model input alone)."""
    out: list[tuple[str, ...] | None] = []
    for i, pred in enumerate(preds):
        pred = tuple(sorted(set(pred)))
        if pred == (i - 1,) or (i == 0 and pred == (MODEL_INPUT,)):
            out.append(None)
        elif pred == (MODEL_INPUT,):
            out.append(())
        else:
            if MODEL_INPUT in pred:
                raise ValueError(f"layer {names[i]!r} reads the model input beside other layers, which the "
                                 f"layer table cannot express")
            out.append(tuple(names[j] for j in pred))
    return out
