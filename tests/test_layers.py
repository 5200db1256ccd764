"""Layer geometry against PyTorch's own output sizes and the validation rules."""

import itertools

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from jaxsplit.layers import (Layer, conv, input_rows, layer_from_dict, linear, output_size, pool, total_macs,
                             total_work)


def _torch_conv_rows(torch, n, k, s, pt, pb, d):
    x = torch.nn.functional.pad(torch.zeros(1, 1, n, 1), (0, 0, pt, pb))
    return torch.nn.functional.conv2d(x, torch.zeros(1, 1, k, 1), stride=(s, 1), dilation=(d, 1)).shape[2]


def _torch_pool_rows(torch, n, k, s, p, ceil):
    return torch.nn.functional.max_pool2d(torch.zeros(1, 1, n, 1), (k, 1), (s, 1), (p, 0), ceil_mode=ceil).shape[2]


@given(n=st.integers(1, 40), k=st.integers(1, 7), s=st.integers(1, 3), pt=st.integers(0, 3),
       pb=st.integers(0, 3), d=st.integers(1, 3))
def test_conv_output_size_matches_torch(n, k, s, pt, pb, d):
    torch = pytest.importorskip("torch")
    keff = d * (k - 1) + 1
    if keff > n + pt + pb:
        assert output_size(n, k, s, pt, pb, d) == 0
        return
    assert output_size(n, k, s, pt, pb, d) == _torch_conv_rows(torch, n, k, s, pt, pb, d)


@given(n=st.integers(1, 40), k=st.integers(1, 7), s=st.integers(1, 4), p=st.integers(0, 3), ceil=st.booleans())
def test_pool_output_size_matches_torch(n, k, s, p, ceil):
    torch = pytest.importorskip("torch")
    assume(p <= k // 2 and k <= n + 2 * p)  # PyTorch's own limits on pooling
    assert output_size(n, k, s, p, p, 1, ceil) == _torch_pool_rows(torch, n, k, s, p, ceil)


def test_output_size_boundaries_exhaustively_against_torch():
    """Every small geometry, so that the boundaries are all hit rather than sampled: inputs just
    larger than the padded kernel, asymmetric border padding, and ceil_mode windows that would start
    exactly at, or past, the end of the padded input (where PyTorch drops the last window)."""
    torch = pytest.importorskip("torch")
    dropped = 0
    for n, k, s in itertools.product(range(1, 11), range(1, 6), range(1, 5)):
        for p in range(0, k // 2 + 1):
            if k > n + 2 * p:
                continue
            for ceil in (False, True):
                assert output_size(n, k, s, p, p, 1, ceil) == _torch_pool_rows(torch, n, k, s, p, ceil), \
                    (n, k, s, p, ceil)
            span = n + 2 * p - k
            dropped += (-(-span // s)) * s >= n + p  # the ceil_mode window that PyTorch drops
        for pt, pb, d in itertools.product(range(3), range(3), (1, 2)):
            want = _torch_conv_rows(torch, n, k, s, pt, pb, d) if d * (k - 1) + 1 <= n + pt + pb else 0
            assert output_size(n, k, s, pt, pb, d) == want, (n, k, s, pt, pb, d)
    assert dropped > 0  # the grid holds the dropped-window case


def test_output_size_defaults_are_pytorchs():
    """Without dilation and ceil_mode given, output_size is PyTorch's default (dilation 1, floor)."""
    torch = pytest.importorskip("torch")
    for n, k, s, p in itertools.product(range(3, 9), range(1, 4), range(1, 4), range(2)):
        assert output_size(n, k, s, p, p) == _torch_conv_rows(torch, n, k, s, p, p, 1), (n, k, s, p)


def test_layer_geometry_keeps_its_axes_apart():
    """Height and width with different kernels, strides, paddings and dilations: each output axis is
    PyTorch's, from its own axis's settings only."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for (kh, kw), (sh, sw), (pt, pb, pl, pr), (dh, dw) in itertools.product(
            ((3, 1), (1, 4)), ((1, 2), (3, 1)), ((2, 0, 1, 3), (0, 1, 2, 0)), ((1, 2), (2, 1))):
        layer = conv(1, 1, (kh, kw), 13, 11, (sh, sw), (pt, pb, pl, pr), (dh, dw))
        x = F.pad(torch.zeros(1, 1, 13, 11), (pl, pr, pt, pb))
        out = F.conv2d(x, torch.zeros(1, 1, kh, kw), stride=(sh, sw), dilation=(dh, dw))
        assert (layer.out_height, layer.out_width) == tuple(out.shape[2:]), layer
        assert layer.kernel_extent == (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
        assert layer.input_rows(1, 2) == input_rows(1, 2, 13, sh, pt, dh * (kh - 1) + 1)
    for (kh, kw), (sh, sw), (ph, pw), ceil in itertools.product(((2, 3), (3, 2)), ((1, 2), (2, 3)), ((1, 0), (0, 1)),
                                                               (False, True)):
        layer = pool("maxpool", 1, (kh, kw), 10, 9, (sh, sw), (ph, pw), ceil)
        out = F.max_pool2d(torch.zeros(1, 1, 10, 9), (kh, kw), (sh, sw), (ph, pw), ceil_mode=ceil)
        assert (layer.out_height, layer.out_width) == tuple(out.shape[2:]), layer


def test_input_rows_cover_exactly_the_windows():
    """Brute force: the rows of the image that the windows of output rows [r, r + n) touch (as sets).

    The model sends one contiguous span, from the first window's first row to the last window's last
    row, clamped to the image: it must hold every touched row; when consecutive windows overlap or
    abut without dilation (stride <= kernel) the touched rows are contiguous and the span is exactly
    theirs, and it is never longer than the contiguous hull of the windows in the image."""
    exact = 0
    for h, k, s, p, d in itertools.product((1, 2, 5, 9), (1, 2, 3, 4), (1, 2, 3), (0, 1, 2), (1, 2)):
        keff = d * (k - 1) + 1
        if keff > h + 2 * p:
            continue
        out = output_size(h, k, s, p, p, d)
        for r in range(out):
            for n in range(0, out - r + 1):
                lo, hi = input_rows(r, n, h, s, p, keff)
                assert 0 <= lo <= hi <= h
                touched = {o * s - p + j * d for o in range(r, r + n) for j in range(k)} & set(range(h))
                hull = set(range(r * s - p, (r + n - 1) * s - p + keff)) & set(range(h)) if n else set()
                span = set(range(lo, hi))
                assert touched <= span, (h, k, s, p, d, r, n)
                assert span == (set(range(min(hull), max(hull) + 1)) if hull else set()), (h, k, s, p, d, r, n)
                if d == 1 and s <= k and touched:
                    assert span == set(range(min(touched), max(touched) + 1)), (h, k, s, p, d, r, n)
                    exact += 1
    assert exact > 0


@pytest.mark.parametrize("h, k, s, p, r, want", [
    (8, 3, 1, 1, 0, (0, 2)),  # first row: the top padding row is not sent
    (8, 3, 1, 1, 7, (6, 8)),  # last row: the bottom padding row is not sent
    (8, 3, 2, 1, 3, (5, 8)),  # last row of a strided layer
    (1, 3, 1, 1, 0, (0, 1)),  # a one-row image
    (5, 1, 1, 2, 0, (0, 0)),  # an output row that reads only padding
    (9, 3, 3, 0, 2, (6, 9)),  # stride = kernel: windows abut
])
def test_one_row_pieces_at_the_borders(h, k, s, p, r, want):
    assert input_rows(r, 1, h, s, p, k) == want
    layer = conv(1, 1, (k, 1), h, 1, (s, 1), (p, p, 0, 0))
    assert layer.input_rows(r, 1) == want


def test_row_work_and_macs():
    c = conv(8, 16, 3, 10, 12, stride=1, padding=1, groups=2)
    assert c.out_height == 10 and c.out_width == 12
    assert c.row_work == 2 * 12 * 16 * 4 * 9
    assert c.macs == 10 * 12 * 16 * 4 * 9
    assert c.work == 10 * c.row_work == 2 * c.macs  # a multiply-add is 2 FLOP
    assert isinstance(c.macs, int)  # a count, as the published figures are
    m = pool("maxpool", 4, 2, 10, 10)
    assert m.row_work == 5 * 4 * 4 and m.macs == 0
    fc = linear(100, 10)
    assert fc.out_height == 1 and fc.row_work == 2000
    assert total_work([c, m, fc]) == c.work + 5 * m.row_work + 2000 and total_macs([c, m, fc]) == c.macs + 1000


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
