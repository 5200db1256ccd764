"""Plain ``torch.nn`` definitions of the zoo models (no torchvision needed).

Module names follow torchvision (and, for Tiny YOLOv2, the indices of one ``nn.Sequential`` named
``layers``), so that :func:`jaxsplit.bridge.from_torch` of each model equals ``jaxsplit.zoo.get``
exactly. Weights are randomly initialised (seeded); only the architecture matters here.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..zoo import ZOO_DEFAULT_SIZE, _make_divisible


def vgg16(num_classes: int = 1000) -> nn.Module:
    """VGG-16 (configuration D) as torchvision defines it."""
    layers: list[nn.Module] = []
    c = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=True)]
            c = int(v)
    return _Classifier(nn.Sequential(*layers), nn.AdaptiveAvgPool2d((7, 7)), nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, num_classes)))


def alexnet(num_classes: int = 1000) -> nn.Module:
    """AlexNet as torchvision defines it."""
    features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(3, 2))
    classifier = nn.Sequential(
        nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(True),
        nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(True), nn.Linear(4096, num_classes))
    return _Classifier(features, nn.AdaptiveAvgPool2d((6, 6)), classifier)


class _Classifier(nn.Module):
    """features -> adaptive average pool -> flatten -> classifier (VGG, AlexNet)."""

    def __init__(self, features: nn.Module, avgpool: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features, self.avgpool, self.classifier = features, avgpool, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet (torchvision's v1.5: the stride of a bottleneck sits on its 3x3 convolution)."""

    def __init__(self, block: type, counts: tuple[int, ...], num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for stage, (count, planes) in enumerate(zip(counts, (64, 128, 256, 512)), start=1):
            blocks = []
            for i in range(count):
                stride = 2 if (i == 0 and stage > 1) else 1
                down = None
                if stride != 1 or self.inplanes != planes * block.expansion:
                    down = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                         nn.BatchNorm2d(planes * block.expansion))
                blocks.append(block(self.inplanes, planes, stride, down))
                self.inplanes = planes * block.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> nn.Module:
    """ResNet-18."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet50(num_classes: int = 1000) -> nn.Module:
    """ResNet-50 v1.5."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


def _conv_bn_relu6(inp: int, out: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, out, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(inp, hidden, 1))
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, hidden),
                   nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) with torchvision's module names."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        c = _make_divisible(32)
        features: list[nn.Module] = [_conv_bn_relu6(3, c, 3, 2)]
        for t, ch, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                            (6, 160, 3, 2), (6, 320, 1, 1)):
            out = _make_divisible(ch)
            for i in range(n):
                features.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        features.append(_conv_bn_relu6(c, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = 1000) -> nn.Module:
    """MobileNetV2."""
    return MobileNetV2(num_classes)


class TinyYOLOv2(nn.Module):
    """Tiny YOLOv2 (VOC) as one ``nn.Sequential`` named ``layers``; the sixth pool is
    ``ZeroPad2d((0, 1, 0, 1))`` + ``MaxPool2d(2, 1)`` (darknet's size-keeping pool)."""

    def __init__(self, num_classes: int = 20, num_anchors: int = 5) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        c = 3
        for i, out in enumerate((16, 32, 64, 128, 256, 512)):
            mods += [nn.Conv2d(c, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.1, True)]
            mods += [nn.MaxPool2d(2, 2)] if i < 5 else [nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(2, 1)]
            c = out
        for _ in range(2):
            mods += [nn.Conv2d(c, 1024, 3, 1, 1, bias=False), nn.BatchNorm2d(1024), nn.LeakyReLU(0.1, True)]
            c = 1024
        mods.append(nn.Conv2d(c, num_anchors * (5 + num_classes), 1))
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def yolov2_tiny(num_classes: int = 20) -> nn.Module:
    """Tiny YOLOv2 (VOC, 20 classes, 5 anchors)."""
    return TinyYOLOv2(num_classes)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg16": vgg16,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "alexnet": alexnet,
    "mobilenet_v2": mobilenet_v2,
    "yolov2_tiny": yolov2_tiny,
}


def get(name: str, seed: int = 0) -> nn.Module:
    """A freshly initialised zoo model in eval mode (seeded, so every process builds the same one).

    BatchNorm statistics are randomised too, so that the eval-mode normalisation is not an identity.
    """
    if name not in MODELS:
        raise ValueError(f"field 'model': unknown zoo model {name!r}; known: {', '.join(MODELS)}")
    torch.manual_seed(seed)
    model = MODELS[name]()
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model.eval()


def default_size(name: str) -> tuple[int, int]:
    """The zoo's usual input size (H, W) for ``name``."""
    return ZOO_DEFAULT_SIZE[name]
