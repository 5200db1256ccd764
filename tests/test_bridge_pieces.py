"""Pieces of a split compute exactly what the unsplit layer computes (MODEL.md section 3)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from jaxsplit.bridge import UnsupportedModelError, trace, torch_zoo  # noqa: E402
from jaxsplit.bridge.pieces import reference_values, split_run, validate_plan  # noqa: E402
from jaxsplit.bridge.planning import default_devices, plan_rows  # noqa: E402


@st.composite
def layer_specs(draw):
    kind = draw(st.sampled_from(["conv", "maxpool", "avgpool"]))
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    zero_pad = draw(st.sampled_from([None, (0, 1, 0, 1), (1, 0, 2, 1), (2, 2, 0, 3)]))
    spec = {"kind": kind, "kernel": (kh, kw), "stride": (sh, sw), "zero_pad": zero_pad}
    if kind == "conv":
        spec["dilation"] = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
        spec["padding"] = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
        spec["groups"] = draw(st.sampled_from([1, 2]))
        spec["same"] = draw(st.booleans()) and (sh, sw) == (1, 1)
    else:
        spec["padding"] = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
        spec["ceil_mode"] = draw(st.booleans())
        spec["count_include_pad"] = draw(st.booleans())
    return spec


def build(spec, channels):
    mods = [nn.ZeroPad2d(spec["zero_pad"])] if spec["zero_pad"] else []
    if spec["kind"] == "conv":
        mods.append(nn.Conv2d(channels, 2 * channels, spec["kernel"], spec["stride"],
                              "same" if spec["same"] else spec["padding"], spec["dilation"], spec["groups"]))
    elif spec["kind"] == "maxpool":
        mods.append(nn.MaxPool2d(spec["kernel"], spec["stride"], spec["padding"], ceil_mode=spec["ceil_mode"]))
    else:
        mods.append(nn.AvgPool2d(spec["kernel"], spec["stride"], spec["padding"], spec["ceil_mode"],
                                 spec["count_include_pad"]))
    return mods


def random_rows(draw, total, n):
    """Rows per device summing to total, biased towards empty and one-row pieces."""
    rows = [0] * n
    left = total
    for i in range(n - 1):
        r = draw(st.one_of(st.just(0), st.just(min(1, left)), st.integers(0, left)))
        rows[i], left = r, left - r
    rows[-1] = left
    return rows


def traced_or_reject(mods, shape):
    torch.manual_seed(0)
    model = nn.Sequential(*mods).double()
    try:
        traced = trace(model, shape)
    except UnsupportedModelError:
        return None  # a geometry PyTorch itself rejects (kernel larger than the padded input, ...)
    return traced


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(spec=layer_specs(), h=st.integers(1, 64), w=st.integers(1, 12), channels=st.sampled_from([2, 4]),
       n=st.integers(1, 5), data=st.data())
def test_random_layer_pieces_equal_the_full_layer(spec, h, w, channels, n, data):
    traced = traced_or_reject(build(spec, channels), (1, channels, h, w))
    if traced is None:
        return
    op = traced.ops[0]
    rows = random_rows(data.draw, op.layer.out_height, n)
    x = torch.randn(2, channels, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    values = reference_values(traced, x)
    report = split_run(traced, values, 0, 0, rows)
    assert report.max_error <= 1e-10, (spec, rows, report.max_error)
    start, expected = 0, []
    for r in rows:
        lo, hi = op.layer.input_rows(start, r)
        expected.append(hi - lo if r else 0)
        start += r
    assert report.input_rows == expected
    assert report.redundant_work == 0.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(specs=st.lists(layer_specs(), min_size=2, max_size=3), h=st.integers(8, 48), n=st.integers(1, 4),
       residual=st.booleans(), data=st.data())
def test_random_fused_stacks_equal_the_full_model(specs, h, n, residual, data):
    mods, c = [], 2
    for spec in specs:
        mods += build(spec, c)
        c = mods[-1].out_channels if isinstance(mods[-1], nn.Conv2d) else c
    if residual:  # a shape-keeping block with a skip connection in the middle of the run
        mods.insert(len(build(specs[0], 2)), _Residual(mods[len(build(specs[0], 2)) - 1]))
    traced = traced_or_reject(mods, (1, 2, h, 9))
    if traced is None:
        return
    last = len(traced.ops) - 1
    rows = random_rows(data.draw, traced.ops[last].layer.out_height, n)
    x = torch.randn(1, 2, h, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    report = split_run(traced, reference_values(traced, x), 0, last, rows)
    assert report.max_error <= 1e-10, (specs, rows)
    assert report.computed_rows[-1] == traced.ops[last].layer.out_height
    assert report.redundant_work >= 0.0
    assert all(r == 0 for r, n_rows in zip(report.input_rows, rows) if n_rows == 0)


class _Residual(nn.Module):
    """x + conv3x3(x) on the channels of the layer in front of it."""

    def __init__(self, prev: nn.Module) -> None:
        super().__init__()
        c = prev.out_channels if isinstance(prev, nn.Conv2d) else 2
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + torch.relu(self.conv(x))


def _zoo_traced(name, dtype=torch.float64, size=(64, 64)):
    model = torch_zoo.get(name).to(dtype)
    x = torch.randn(1, 3, *size, dtype=dtype, generator=torch.Generator().manual_seed(0))
    return trace(model, x), x


FUSED = {"vgg16": (0, 5), "resnet18": (2, 8), "resnet50": (1, 5), "alexnet": (0, 5),
         "mobilenet_v2": (1, 8), "yolov2_tiny": (6, 12)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(torch_zoo.MODELS))
def test_zoo_models_split_per_layer_and_fused(name):
    traced, x = _zoo_traced(name, size=(64, 64) if name == "alexnet" else (40, 40))
    values = reference_values(traced, x)
    for n, solver in ((2, "closed_form"), (3, "equal"), (5, "exact")):
        rows, _ = plan_rows(traced.layers, default_devices(n), solver)
        assert rows.shape == (len(traced.ops), n)
        reports = [split_run(traced, values, i, i, rows[i]) for i in range(len(traced.ops))]
        bad = [(r.name, r.max_error) for r in reports if not r.passed]
        assert not bad, (n, solver, bad)
        a, b = FUSED[name]
        fused = split_run(traced, values, a, b - 1, rows[b - 1])
        assert fused.passed, (n, solver, fused)
        assert fused.computed_rows[-1] == traced.ops[b - 1].layer.out_height
        if sum(r > 0 for r in rows[b - 1]) > 1:  # several pieces recompute their halos
            assert fused.redundant_work > 0


def test_float32_tolerance_and_fused_resnet_block():
    traced, x = _zoo_traced("resnet18", torch.float32, (48, 40))
    rows, _ = plan_rows(traced.layers, default_devices(3), "equal")
    reports = validate_plan(traced, x, rows, fused=(3, 6))  # layer1.1 ... layer2.0.conv1
    assert all(r.passed for r in reports)
    assert reports[0].tolerance == 1e-5
    assert reports[-1].name == "layer1.0.conv2..layer1.1.conv2"  # a residual add inside the run


def test_yolo_pad_is_zero_not_minus_infinity():
    """The sixth YOLO pool pads with zeros (ZeroPad2d): a -inf border would change negative maxima."""
    traced, x = _zoo_traced("yolov2_tiny", size=(64, 64))
    values = reference_values(traced, x)
    i = next(i for i, op in enumerate(traced.ops) if op.layer.name == "layers.24")
    op = traced.ops[i]
    assert op.zero_pad == (0, 1, 0, 1) and op.own_pad == (0, 0, 0, 0)
    inp = values[op.input]
    assert (inp[:, :, -1] < 0).any()  # leaky ReLU outputs: the zero border matters
    assert split_run(traced, values, i, i, [1, 1]).passed


def test_bad_plans_raise():
    traced, x = _zoo_traced("alexnet")
    values = reference_values(traced, x)
    with pytest.raises(ValueError, match="field 'rows'"):
        split_run(traced, values, 0, 0, [5, 5])
    with pytest.raises(ValueError, match="field 'rows'"):
        split_run(traced, values, 0, 0, [16, -1])
    with pytest.raises(ValueError, match="field 'fused'"):
        split_run(traced, values, 3, 2, [3])
    with pytest.raises(UnsupportedModelError, match="not row-local"):
        split_run(traced, values, 7, 8, [1])
    with pytest.raises(ValueError, match="field 'rows' must have shape"):
        validate_plan(traced, x, np.zeros((3, 2), int))


@pytest.mark.parametrize("mods, h", [
    ([nn.Conv2d(2, 3, 1, padding=3)], 4),  # pieces that read nothing but padding rows
    ([nn.Conv2d(2, 3, 3, padding=3, dilation=2), nn.Conv2d(3, 3, 1, padding=2)], 5),
    ([nn.MaxPool2d(3, 2, 1, ceil_mode=True)], 6),  # the last window runs past the padded input
    ([nn.ZeroPad2d((0, 1, 0, 1)), nn.AvgPool2d(3, 2, 0, ceil_mode=True)], 6),
])
def test_padding_only_and_overflow_pieces(mods, h):
    torch.manual_seed(0)
    traced = trace(nn.Sequential(*mods).double(), (1, 2, h, 5))
    x = torch.randn(1, 2, h, 5, dtype=torch.float64) - 3.0  # negative: a wrong max-pool border shows
    values = reference_values(traced, x)
    last = len(traced.ops) - 1
    out = traced.ops[last].layer.out_height
    for rows in ([1] * out, [0, out, 0], [out - 1, 1] if out > 1 else [out]):
        assert split_run(traced, values, 0, last, rows).passed
        assert split_run(traced, values, last, last, rows).passed
