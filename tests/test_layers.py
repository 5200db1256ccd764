"""Layer geometry against PyTorch's own output sizes and the validation rules."""

import itertools

import numpy as np
import pytest
from hypothesis import given, strategies as st

from jaxsplit.layers import Layer, conv, input_rows, layer_from_dict, linear, output_size, pool


@given(n=st.integers(1, 40), k=st.integers(1, 7), s=st.integers(1, 3), pt=st.integers(0, 3),
       pb=st.integers(0, 3), d=st.integers(1, 3))
def test_conv_output_size_matches_torch(n, k, s, pt, pb, d):
    torch = pytest.importorskip("torch")
    keff = d * (k - 1) + 1
    if keff > n + pt + pb:
        assert output_size(n, k, s, pt, pb, d) == 0
        return
    x = torch.zeros(1, 1, n, 1)
    x = torch.nn.functional.pad(x, (0, 0, pt, pb))
    out = torch.nn.functional.conv2d(x, torch.zeros(1, 1, k, 1), stride=(s, 1), dilation=(d, 1))
    assert output_size(n, k, s, pt, pb, d) == out.shape[2]


@given(n=st.integers(1, 40), k=st.integers(1, 7), s=st.integers(1, 4), p=st.integers(0, 3), ceil=st.booleans())
def test_pool_output_size_matches_torch(n, k, s, p, ceil):
    torch = pytest.importorskip("torch")
    if p > k // 2 or k > n + 2 * p:
        return
    out = torch.nn.functional.max_pool2d(torch.zeros(1, 1, n, n), k, s, p, ceil_mode=ceil)
    assert output_size(n, k, s, p, p, 1, ceil) == out.shape[2]


def test_input_rows_cover_exactly_the_windows():
    # Brute force: the union of the windows of rows [r, r+n), clamped to the image.
    for h, k, s, p, d in itertools.product((5, 9), (1, 3, 4), (1, 2, 3), (0, 1, 2), (1, 2)):
        keff = d * (k - 1) + 1
        if keff > h + 2 * p:
            continue
        out = output_size(h, k, s, p, p, d)
        for r in range(out):
            for n in range(0, out - r + 1):
                rows = {o * s - p + j * d for o in range(r, r + n) for j in range(k)}
                rows = {x for x in rows if 0 <= x < h}
                lo, hi = input_rows(r, n, h, s, p, keff)
                if n == 0:
                    assert hi == lo
                elif rows:
                    # contiguous span from the first to the last touched row (dilation gaps included)
                    assert (lo, hi) == (min(rows), max(rows) + 1) or (lo <= min(rows) and hi >= max(rows) + 1)
                    assert lo == max(0, r * s - p) and hi == min(h, (r + n - 1) * s - p + keff)


def test_row_work_and_macs():
    c = conv(8, 16, 3, 10, 12, stride=1, padding=1, groups=2)
    assert c.out_height == 10 and c.out_width == 12
    assert c.row_work == 2 * 12 * 16 * 4 * 9
    assert c.macs == 10 * 12 * 16 * 4 * 9
    m = pool("maxpool", 4, 2, 10, 10)
    assert m.row_work == 5 * 4 * 4 and m.macs == 0
    fc = linear(100, 10)
    assert fc.out_height == 1 and fc.row_work == 2000


@pytest.mark.parametrize("obj, field", [
    ({"type": "conv", "in_channels": 3, "out_channels": 8, "kernel": [3, 3], "in_height": 8}, "in_width"),
    ({"type": "conv", "in_channels": -3, "out_channels": 8, "kernel": [3, 3], "in_height": 8, "in_width": 8}, "in_channels"),
    ({"type": "conv", "in_channels": 3, "out_channels": 8, "kernel": [9, 3], "in_height": 8, "in_width": 8}, "kernel"),
    ({"type": "conv", "in_channels": 3, "out_channels": 8, "kernel": [3, 3], "in_height": 0, "in_width": 8}, "in_height"),
    ({"type": "conv", "in_channels": 3, "out_channels": 8, "kernel": [3, 3], "groups": 2, "in_height": 8, "in_width": 8}, "groups"),
    ({"type": "conv", "in_channels": 3, "out_channels": 8, "kernel": "3", "in_height": 8, "in_width": 8}, "kernel"),
    ({"type": "conv", "in_channels": 3, "out_channels": 8, "kernel": [3, 3], "padding": [1, -1], "in_height": 8, "in_width": 8}, "padding"),
    ({"type": "maxpool", "channels": 3, "kernel": [2, 2], "padding": [2, 0], "in_height": 8, "in_width": 8}, "padding"),
    ({"type": "maxpool", "channels": 3, "kernel": [2, 2], "ceil_mode": 1, "in_height": 8, "in_width": 8}, "ceil_mode"),
    ({"type": "linear", "in_features": 0, "out_features": 8}, "in_features"),
    ({"type": "softmax"}, "type"),
    ({"type": "linear", "in_features": 4, "out_features": 8, "bias": True}, "bias"),
])
def test_bad_layer_fields_are_named(obj, field):
    with pytest.raises(ValueError, match=field):
        layer_from_dict(obj, "layers[0]: ")


def test_layer_roundtrip():
    for layer in (conv(3, 8, (3, 5), 20, 30, (2, 1), (1, 2, 0, 3), (2, 1), 1, "a"),
                  pool("avgpool", 4, 3, 9, 9, 2, 1, True, "b"), linear(5, 6, "c")):
        assert layer_from_dict(layer.to_dict()) == layer
