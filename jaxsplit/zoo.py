"""Model zoo: layer tables of well-known CNNs for any input size (MODEL.md section 1).

Each table lists the layers that cost time, in the topological order a ``torch.fx`` trace of the
reference PyTorch definition visits them, named by their PyTorch module path (torchvision's names for
the torchvision architectures). BatchNorm, activations, dropout, residual adds, flatten and
adaptive/global pooling cost nothing and are not listed (MODEL.md section 1); adaptive pooling to a
fixed size in front of a classifier (VGG, AlexNet) is treated the same way, so the head's
``in_features`` is that of the reference model whatever the input size.

>>> from jaxsplit import zoo
>>> layers = zoo.get("vgg16", (224, 224))
>>> round(sum(l.macs for l in layers) / 1e9, 1)
15.5
"""

from __future__ import annotations

import functools
from typing import Callable

from .contract import MAX_SIZE
from .layers import Layer, conv, linear, pool

ZOO_DEFAULT_SIZE = {
    "vgg16": (224, 224),
    "resnet18": (224, 224),
    "resnet50": (224, 224),
    "alexnet": (224, 224),
    "mobilenet_v2": (224, 224),
    "yolov2_tiny": (416, 416),
}

# Published multiply-accumulate counts at 224x224 (torchvision model cards), in MACs.
PUBLISHED_MACS = {
    "vgg16": 15.5e9,
    "resnet18": 1.82e9,
    "resnet50": 4.1e9,
    "alexnet": 0.71e9,
    "mobilenet_v2": 0.30e9,
}


class _Builder:
    """Tracks the feature-map shape (C, H, W) while layers are appended."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        self.c, self.h, self.w = channels, height, width
        self.layers: list[Layer] = []

    def shape(self) -> tuple[int, int, int]:
        return self.c, self.h, self.w

    def set_shape(self, shape: tuple[int, int, int]) -> None:
        self.c, self.h, self.w = shape

    def add(self, layer: Layer) -> Layer:
        self.layers.append(layer)
        self.c, self.h, self.w = layer.output_shape
        return layer

    def conv(self, name: str, out: int, k: int | tuple[int, int], s: int = 1,
             p: int | tuple[int, ...] = 0, d: int = 1, g: int = 1,
             inputs: tuple[str, ...] | None = None) -> Layer:
        return self.add(conv(self.c, out, k, self.h, self.w, s, p, d, g, name, self._reads(inputs)))

    def _reads(self, inputs: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """``inputs`` as a layer stores them: None when they are just the previous layer."""
        if inputs is None or (self.layers and tuple(inputs) == (self.layers[-1].name,)):
            return None
        return tuple(inputs)

    def pool(self, name: str, kind: str, k: int, s: int | None = None, p: int | tuple[int, ...] = 0,
             ceil_mode: bool = False) -> Layer:
        return self.add(pool(kind, self.c, k, self.h, self.w, s, p, ceil_mode, name))

    def linear(self, name: str, in_features: int, out: int, inputs: tuple[str, ...] | None = None) -> Layer:
        layer = linear(in_features, out, name, self._reads(inputs))
        self.layers.append(layer)
        self.c, self.h, self.w = out, 1, 1
        return layer


def vgg16(height: int = 224, width: int = 224, num_classes: int = 1000) -> list[Layer]:
    """VGG-16 (configuration D), torchvision's module names."""
    b = _Builder(3, height, width)
    idx = 0
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            b.pool(f"features.{idx}", "maxpool", 2, 2)
            idx += 1
        else:
            b.conv(f"features.{idx}", int(v), 3, 1, 1)
            idx += 2  # conv, ReLU
    b.linear("classifier.0", 512 * 7 * 7, 4096)
    b.linear("classifier.3", 4096, 4096)
    b.linear("classifier.6", 4096, num_classes)
    return b.layers


def alexnet(height: int = 224, width: int = 224, num_classes: int = 1000) -> list[Layer]:
    """AlexNet as in torchvision (one-GPU variant)."""
    b = _Builder(3, height, width)
    b.conv("features.0", 64, 11, 4, 2)
    b.pool("features.2", "maxpool", 3, 2)
    b.conv("features.3", 192, 5, 1, 2)
    b.pool("features.5", "maxpool", 3, 2)
    b.conv("features.6", 384, 3, 1, 1)
    b.conv("features.8", 256, 3, 1, 1)
    b.conv("features.10", 256, 3, 1, 1)
    b.pool("features.12", "maxpool", 3, 2)
    b.linear("classifier.1", 256 * 6 * 6, 4096)
    b.linear("classifier.4", 4096, 4096)
    b.linear("classifier.6", 4096, num_classes)
    return b.layers


def _resnet(blocks: tuple[int, ...], bottleneck: bool, height: int, width: int,
            num_classes: int) -> list[Layer]:
    b = _Builder(3, height, width)
    b.conv("conv1", 64, 7, 2, 3)
    b.pool("maxpool", "maxpool", 3, 2, 1)
    expansion = 4 if bottleneck else 1
    # The graph (MODEL.md section 7): a block's output is the sum of its last convolution and its
    # shortcut, so the next block reads both (the sum folded); an identity shortcut is the block's
    # own input, itself such a set.
    block_input: tuple[str, ...] = ("maxpool",)
    for stage, (count, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        for i in range(count):
            stride = 2 if (i == 0 and stage > 1) else 1
            name = f"layer{stage}.{i}"
            entry = b.shape()
            if bottleneck:
                b.conv(f"{name}.conv1", planes, 1, inputs=block_input)
                b.conv(f"{name}.conv2", planes, 3, stride, 1)
                last = b.conv(f"{name}.conv3", planes * expansion, 1)
            else:
                b.conv(f"{name}.conv1", planes, 3, stride, 1, inputs=block_input)
                last = b.conv(f"{name}.conv2", planes, 3, 1, 1)
            if stride != 1 or entry[0] != planes * expansion:
                out = b.shape()
                b.set_shape(entry)
                shortcut = b.conv(f"{name}.downsample.0", planes * expansion, 1, stride, inputs=block_input)
                assert b.shape() == out
                block_input = _in_table_order(b.layers, (last.name, shortcut.name))
            else:
                block_input = _in_table_order(b.layers, (last.name,) + block_input)
    b.linear("fc", 512 * expansion, num_classes, inputs=block_input)
    return b.layers


def _in_table_order(layers: list[Layer], names: tuple[str, ...]) -> tuple[str, ...]:
    order = {layer.name: i for i, layer in enumerate(layers)}
    return tuple(sorted(set(names), key=order.__getitem__))


def resnet18(height: int = 224, width: int = 224, num_classes: int = 1000) -> list[Layer]:
    """ResNet-18 (torchvision, BasicBlock)."""
    return _resnet((2, 2, 2, 2), False, height, width, num_classes)


def resnet50(height: int = 224, width: int = 224, num_classes: int = 1000) -> list[Layer]:
    """ResNet-50 v1.5 (torchvision: the stride sits on the 3x3 convolution)."""
    return _resnet((3, 4, 6, 3), True, height, width, num_classes)


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def mobilenet_v2(height: int = 224, width: int = 224, num_classes: int = 1000) -> list[Layer]:
    """MobileNetV2 (width 1.0), torchvision's module names."""
    b = _Builder(3, height, width)
    b.conv("features.0.0", 32, 3, 2, 1)
    settings = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))
    idx = 1
    block_input: tuple[str, ...] = ("features.0.0",)
    for t, c, n, s in settings:
        out = _make_divisible(c)
        for i in range(n):
            stride = s if i == 0 else 1
            residual = stride == 1 and b.c == out
            hidden = int(round(b.c * t))
            name = f"features.{idx}.conv"
            j = 0
            if t != 1:
                b.conv(f"{name}.0.0", hidden, 1, inputs=block_input)
                j = 1
                b.conv(f"{name}.{j}.0", hidden, 3, stride, 1, 1, hidden)
            else:
                b.conv(f"{name}.{j}.0", hidden, 3, stride, 1, 1, hidden, inputs=block_input)
            last = b.conv(f"{name}.{j + 1}", out, 1)
            # an inverted residual block adds its input to its output (stride 1, same channels)
            block_input = _in_table_order(b.layers, (last.name,) + block_input) if residual else (last.name,)
            idx += 1
    b.conv(f"features.{idx}.0", 1280, 1, inputs=block_input)
    b.linear("classifier.1", 1280, num_classes)
    return b.layers


def yolov2_tiny(height: int = 416, width: int = 416, num_classes: int = 20,
                num_anchors: int = 5) -> list[Layer]:
    """Tiny YOLOv2 (VOC): nine 3x3/1x1 convolutions and six max pools.

    The sixth pool is darknet's size-2 stride-1 pool that keeps the grid size; in PyTorch it is
    ``ZeroPad2d((0, 1, 0, 1))`` followed by ``MaxPool2d(2, 1)``, i.e. asymmetric padding (0, 1, 0, 1).
    Names are the indices of the reference ``nn.Sequential`` (``layers.i``).
    """
    b = _Builder(3, height, width)
    idx = 0
    for i, c in enumerate((16, 32, 64, 128, 256, 512)):
        b.conv(f"layers.{idx}", c, 3, 1, 1)
        idx += 3  # conv, BatchNorm, LeakyReLU
        if i < 5:
            b.pool(f"layers.{idx}", "maxpool", 2, 2)
            idx += 1
        else:
            idx += 1  # ZeroPad2d
            b.pool(f"layers.{idx}", "maxpool", 2, 1, (0, 1, 0, 1))
            idx += 1
    b.conv(f"layers.{idx}", 1024, 3, 1, 1)
    idx += 3
    b.conv(f"layers.{idx}", 1024, 3, 1, 1)
    idx += 3
    b.conv(f"layers.{idx}", num_anchors * (5 + num_classes), 1)
    return b.layers


MODELS: dict[str, Callable[..., list[Layer]]] = {
    "vgg16": vgg16,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "alexnet": alexnet,
    "mobilenet_v2": mobilenet_v2,
    "yolov2_tiny": yolov2_tiny,
}


def names() -> list[str]:
    """Names of the zoo models."""
    return list(MODELS)


def get(name: str, input_size: tuple[int, int] | None = None) -> list[Layer]:
    """Layer table of zoo model ``name`` at ``input_size`` = (H, W) (its default size if None).

    Raises ``ValueError`` for an unknown name or an input too small for the model.
    """
    if name not in MODELS:
        raise ValueError(f"field 'model': unknown zoo model {name!r}; known: {', '.join(MODELS)}")
    if input_size is not None and (isinstance(input_size, (str, bytes)) or not hasattr(input_size, "__len__")
                                   or len(input_size) != 2):
        raise ValueError(f"field 'input_size': expected (H, W), two positive integers, got {input_size!r}")
    h, w = input_size if input_size is not None else ZOO_DEFAULT_SIZE[name]
    for field, v in (("input_size[0]", h), ("input_size[1]", w)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"field '{field}' must be a positive integer, got {v!r}")
        if v > MAX_SIZE:
            raise ValueError(f"field '{field}' must be at most {MAX_SIZE} (2^24 - 1), got {v!r}")
    try:
        return list(_table(name, h, w))
    except ValueError as err:
        raise ValueError(f"field 'input_size': {list((h, w))} is too small for {name}: {err}") from None


@functools.lru_cache(maxsize=256)
def _table(name: str, h: int, w: int) -> tuple[Layer, ...]:
    """A model's layer table, built once per size (layers are frozen; a batch of instances of one model
    shares it)."""
    return tuple(MODELS[name](h, w))
