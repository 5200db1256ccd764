"""Reading PyTorch models into layer tables (MODEL.md section 1)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from jaxsplit import zoo  # noqa: E402
from jaxsplit.bridge import UnsupportedModelError, from_torch, torch_zoo  # noqa: E402
from jaxsplit.layers import conv, linear, pool  # noqa: E402


@pytest.fixture(scope="module")
def zoo_models():
    return {name: torch_zoo.get(name) for name in torch_zoo.MODELS}


@pytest.mark.parametrize("name", list(torch_zoo.MODELS))
@pytest.mark.parametrize("size", [(64, 64), (70, 90)])
def test_zoo_tables_equal(zoo_models, name, size):
    got = from_torch(zoo_models[name], (3, *size))
    want = zoo.get(name, size)
    assert [l.name for l in got] == [l.name for l in want]
    assert got == want


def test_default_size_resnet18_equals_zoo(zoo_models):
    assert from_torch(zoo_models["resnet18"], torch.zeros(1, 3, 224, 224)) == zoo.get("resnet18")


class Functional(nn.Module):
    """Functional calls, residual adds, 'same' padding, rectangular kernels, dilation, ceil_mode, ZeroPad2d."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, (3, 5), stride=(2, 1), padding=(1, 2))
        self.b = nn.Conv2d(8, 8, 4, padding="same", dilation=2, groups=4)
        self.pad = nn.ZeroPad2d((1, 0, 2, 1))
        self.c = nn.Conv2d(8, 6, 3)
        self.p = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.q = nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        y = F.relu(self.a(x))
        y = torch.add(y, self.b(y)) + F.leaky_relu(y, 0.1)
        y = self.q(self.p(self.c(self.pad(y))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def test_functional_model_table():
    layers = from_torch(Functional(), (3, 21, 17))
    want = [
        conv(3, 8, (3, 5), 21, 17, (2, 1), (1, 2), name="a"),
        conv(8, 8, 4, 11, 17, 1, (3, 3, 3, 3), 2, 4, name="b"),
        conv(8, 6, 3, 11, 17, 1, (2, 1, 1, 0), name="c", inputs=("a", "b")),  # the sums folded
        pool("maxpool", 6, 3, 12, 16, 2, 1, True, name="p"),
        pool("avgpool", 6, 2, 7, 9, 2, 0, True, name="q"),
        linear(6, 4, name="fc"),
    ]
    assert layers == want


def test_same_padding_even_kernel_is_asymmetric():
    layers = from_torch(nn.Sequential(nn.Conv2d(2, 2, (2, 4), padding="same")), (2, 9, 9))
    assert layers[0].padding == (0, 1, 1, 2)
    assert layers[0].out_height == 9 and layers[0].out_width == 9


class Upsampling(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 3, 3)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x):
        return self.up(self.c(x))


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 3, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.c(x)
        return x


class RowConcat(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 3, 3)

    def forward(self, x):
        return torch.cat([self.c(x), self.c(x)], dim=2)


class LonePad(nn.Module):
    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d(1)
        self.c = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.c(x) + self.pad(x)[:, :, 1:-1, 1:-1]


@pytest.mark.parametrize("model, match", [
    (Upsampling(), r"node 'up' \(call_module Upsample at 'up'\)"),
    (Branching(), r"torch.fx cannot trace"),
    (RowConcat(), r"node 'cat' .*dim 2"),
    (LonePad(), r"node 'pad' \(call_module ZeroPad2d"),
    (nn.Sequential(nn.Conv2d(3, 3, 3, padding_mode="reflect")), r"padding_mode 'reflect'"),
    (nn.Sequential(nn.Conv2d(3, 3, 3), nn.LayerNorm([3, 6, 6])), r"LayerNorm"),
    (nn.Sequential(nn.Linear(8, 3)), r"Linear layer must follow flatten"),
    (nn.Sequential(nn.ReLU()), r"no Conv2d"),
])
def test_unsupported_models_raise_naming_the_node(model, match):
    with pytest.raises(UnsupportedModelError, match=match):
        from_torch(model, (3, 8, 8))


def test_bad_example_input():
    with pytest.raises(ValueError, match="example_input"):
        from_torch(nn.Sequential(nn.Conv2d(3, 3, 3)), (8, 8))
    with pytest.raises(ValueError, match="example_input"):
        from_torch(nn.Sequential(nn.Conv2d(3, 3, 3)), torch.zeros(3, 8))


def test_inplace_ops_do_not_change_the_users_model():
    model = torch_zoo.get("resnet18")
    from_torch(model, (3, 32, 32))
    assert model.relu.inplace is True
