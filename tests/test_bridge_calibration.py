"""Per-class compute-cost calibration: fitting, prediction, core-sharing slowdowns, held-out shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("scipy")

from jaxsplit import zoo  # noqa: E402
from jaxsplit.bridge import calibration as cb  # noqa: E402
from jaxsplit.layers import conv, linear, pool  # noqa: E402
from jaxsplit.reference import layer_latency  # noqa: E402

CONV = conv(16, 32, 3, 40, 40, 1, 1, name="c")


CONVS = [CONV, conv(32, 64, 3, 20, 20, 1, 1), conv(8, 24, 1, 30, 30), conv(3, 16, 5, 50, 50, 2, 2)]


def _samples(layers=CONVS) -> np.ndarray:
    """Features of pieces of several layers (whole, halves, single rows)."""
    return np.asarray([cb.piece_features(l, s, n) for l in layers
                       for s, n in [(0, 1), (1, l.out_height // 2), (0, l.out_height), (l.out_height - 1, 1)]])


def test_piece_features_by_hand():
    f = cb.piece_features(CONV, 10, 5)
    lo, hi = CONV.input_rows(10, 5)
    assert (lo, hi) == (9, 16)
    assert f.tolist() == [1.0, CONV.row_work * 5, (7 * 40 * 16 + 5 * 40 * 32) * 4.0, 32 * 16 * 9 * 4.0]
    assert cb.piece_features(CONV, 10, 0).tolist() == [0.0] * 4
    fc = linear(512, 100)
    assert cb.piece_features(fc, 0, 1).tolist() == [1.0, 2.0 * 512 * 100, (512 + 100) * 4.0, 512 * 100 * 4.0]
    assert cb.piece_features(pool("maxpool", 8, 2, 10, 10), 0, 5)[3] == 0.0
    with pytest.raises(ValueError, match="field 'rows'"):
        cb.piece_features(CONV, 38, 5)


def test_layer_class():
    assert cb.layer_class(CONV) == "conv"
    assert cb.layer_class(conv(16, 16, 3, 8, 8, 1, 1, groups=16)) == "grouped"
    assert cb.layer_class(pool("avgpool", 8, 2, 10, 10)) == "avgpool"
    assert cb.layer_class(linear(4, 2)) == "linear"


def test_fit_recovers_known_costs():
    truth = np.array([2e-5, 5e-12, 1e-10, 2e-10])
    x = _samples()
    y = x @ truth
    np.testing.assert_allclose(cb.fit_costs(x, y), truth, rtol=1e-6, atol=1e-18)
    # noisy timings: the whole-piece predictions stay within the noise
    rng = np.random.default_rng(0)
    y_noisy = y * rng.uniform(0.97, 1.03, y.shape)
    pred = x @ cb.fit_costs(x, y_noisy)
    assert np.max(np.abs(pred - y) / y) < 0.06


def test_fit_pool_without_parameters_gives_zero_parameter_cost():
    pools = [pool("maxpool", 32, 2, 64, 64), pool("maxpool", 8, 3, 30, 30, 2, 1)]
    truth = np.array([1e-5, 2e-9, 3e-10, 0.0])
    x = _samples(pools)
    c = cb.fit_costs(x, x @ truth)
    assert c[3] == 0.0
    np.testing.assert_allclose(c[:3], truth[:3], rtol=1e-6)


@pytest.mark.parametrize("features, seconds, match", [
    (np.ones((3, 3)), np.ones(3), "field 'features'"),
    (np.ones((3, 4)), np.ones(2), "field 'seconds' must have shape"),
    (np.ones((1, 4)), np.ones(1), "at least 2 samples"),
    (np.ones((2, 4)), np.array([1.0, -1.0]), "positive and finite"),
    (np.ones((2, 4)), np.array([1.0, math.nan]), "positive and finite"),
    (-np.ones((2, 4)), np.ones(2), "finite and non-negative"),
])
def test_fit_bad_input(features, seconds, match):
    with pytest.raises(ValueError, match=match):
        cb.fit_costs(features, seconds)


def test_fit_device_needs_every_class():
    x = _samples()
    samples = {c: (x, np.ones(len(x))) for c in cb.CLASSES if c != "linear"}
    with pytest.raises(ValueError, match="no samples of class 'linear'"):
        cb.fit_device(samples)


def test_compute_model_validation_and_contention():
    coef = np.zeros((2, len(cb.CLASSES), 4))
    coef[:, 0] = [1e-5, 1e-11, 0.0, 0.0]
    ones, inf = np.ones((2, 2)), np.full((2, 2), np.inf)
    with pytest.raises(ValueError, match="field 'coef'"):
        cb.ComputeModel(coef[:, :2], ones, inf)
    with pytest.raises(ValueError, match="field 'coef'"):
        cb.ComputeModel(-coef, ones, inf)
    with pytest.raises(ValueError, match="field 'share'"):
        cb.ComputeModel(coef, np.ones(2), inf)
    with pytest.raises(ValueError, match="field 'share'"):
        cb.ComputeModel(coef, 2 * ones, inf)
    with pytest.raises(ValueError, match="field 'slice'"):
        cb.ComputeModel(coef, ones, -ones)
    d = 1e-5 + 1e-11 * CONV.row_work * 4  # CPU time of the piece
    g = d / 4
    m = cb.ComputeModel(coef, np.array([[1.0, 0.5], [1.0, 0.25]]), np.array([[np.inf, g], [np.inf, 0.0]]))
    assert m.cpu_time(0, CONV, 0, 4) == pytest.approx(d)
    assert m.piece_time(0, CONV, 0, 4) == pytest.approx(d)
    # runs g uninterrupted, then at half a core
    assert m.piece_time(0, CONV, 0, 4, concurrent=2) == pytest.approx(g + (d - g) / 0.5)
    assert m.piece_time(1, CONV, 0, 4, concurrent=2) == pytest.approx(d / 0.25)
    # a piece shorter than its slice is not stretched; one just longer is, by its excess only
    d1 = m.cpu_time(0, CONV, 0, 1)
    for slice_s, want in ((2 * d1, d1), (d1 / 2, d1 / 2 + (d1 / 2) / 0.5)):
        short = cb.ComputeModel(coef, np.array([[1.0, 0.5], [1.0, 0.25]]), np.array([[np.inf, slice_s], [np.inf, 0.0]]))
        assert short.piece_time(0, CONV, 0, 1, concurrent=2) == pytest.approx(want)
    assert m.piece_time(1, CONV, 0, 0, concurrent=2) == 0.0
    with pytest.raises(ValueError, match="field 'concurrent'"):
        m.piece_time(0, CONV, 0, 4, concurrent=3)
    with pytest.raises(ValueError, match="field 'rows'"):
        cb.compute_times([CONV], np.array([[40, 0, 0]]), m)


def test_pure_flop_costs_reproduce_model_latency():
    """With costs phi n / F_i and no slowdown, the calibrated latency is MODEL.md section 3's."""
    layers = zoo.get("resnet18", (64, 64))
    flops, bw, tau = [2e10, 1e10, 3e10], [math.inf, 1e9, 5e8], [0.0, 1e-4, 3e-4]
    coef = np.zeros((3, len(cb.CLASSES), 4))
    for i, f in enumerate(flops):
        coef[i, :, 1] = 1.0 / f
    m = cb.ComputeModel.dedicated(coef)
    rng = np.random.default_rng(1)
    rows = np.zeros((len(layers), 3), np.int64)
    for l, layer in enumerate(layers):
        cut = np.sort(rng.integers(0, layer.out_height + 1, 2))
        rows[l] = [cut[0], cut[1] - cut[0], layer.out_height - cut[1]]
    got, comp = cb.layer_latencies(layers, rows, m, bw, tau)
    want = [layer_latency(layer, list(zip(flops, bw, tau)), [1.0] * 3, r) for layer, r in zip(layers, rows)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert comp.shape == rows.shape and np.all(comp[rows == 0] == 0)


def test_contention_from_measured_shares():
    alone = [(0.8, 0.01), (0.6, 0.02), (1.0, math.inf)]
    together = [[(0.8, 0.01)], [(0.4, 0.005), (0.3, 0.004)], [(0.3, 0.003), (0.2, 0.002), (0.5, 0.006)]]
    share, slc = cb.contention(alone, together)
    np.testing.assert_allclose(share[:, 2], [0.3, 0.2, 0.5])
    np.testing.assert_allclose(share[:2, 1], [0.4, 0.3])
    np.testing.assert_allclose(share[2, 1], 1.0 * np.mean([0.4 / 0.8, 0.3 / 0.6]))  # device 2 not in group 2
    np.testing.assert_allclose(share[:, 0], [0.8, 0.6, 1.0])
    assert slc[0, 1] == 0.005 and slc[2, 0] == math.inf and slc[1, 2] == 0.002
    # devices that never share a core get share 1 and are never stretched
    s1, g1 = cb.contention([(1.0, math.inf)] * 2, [[(1.0, math.inf)], [(1.0, math.inf)] * 2])
    assert np.all(s1 == 1.0) and np.all(np.isinf(g1))
    with pytest.raises(ValueError, match="field 'together'"):
        cb.contention(alone[:2], [[(1, 1)], [(1, 1)]])
    with pytest.raises(ValueError, match=r"field 'together\[1\]\[0\]'"):
        cb.contention(alone[:2], [[(1, 1)], [(0.0, 1), (1, 1)]])
    with pytest.raises(ValueError, match=r"field 'alone\[1\]'"):
        cb.contention([(1, 1), (1.5, 1)], [[(1, 1)], [(1, 1), (1, 1)]])
    with pytest.raises(ValueError, match=r"field 'alone\[0\]'"):
        cb.contention([(1, math.nan), (1, 1)], [[(1, 1)], [(1, 1), (1, 1)]])


def test_pack_roundtrip_and_bad_size():
    x = _samples()[:5]
    samples = {"conv": (x, np.arange(1, 6) * 1e-3, np.arange(1, 6) * 2e-3), "linear": (x[:2], np.ones(2), np.ones(2))}
    back = cb.unpack(cb.pack(samples))
    assert set(back) == {"conv", "linear"}
    for c in samples:
        for a, b in zip(samples[c], back[c]):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="field 'samples'"):
        cb.unpack(np.zeros(8))


def test_benchmark_shapes_are_held_out_from_the_zoo():
    """No microbenchmark layer has the geometry of any zoo layer (the fit is held out)."""
    import torch

    from jaxsplit.bridge.graph import trace

    def key(l):
        return (l.kind, l.in_channels, l.out_channels, l.kernel, l.stride, l.groups, l.in_height, l.in_width)

    zoo_keys = {key(l) for name in zoo.MODELS for l in zoo.get(name)}
    count = 0
    for cls, shapes in cb.BENCH_LAYERS.items():
        for args, shape in shapes:
            module = cb._bench_module(cls, args)
            if cls == "linear":
                traced = trace(torch.nn.Sequential(torch.nn.Flatten(), module), (1, args[0], 1, 1))
            else:
                traced = trace(torch.nn.Sequential(module), (1, *shape))
            layer = traced.layers[0]
            assert cb.layer_class(layer) == cls
            assert key(layer) not in zoo_keys, (cls, args, shape)
            count += 1
    assert count == sum(len(v) for v in cb.BENCH_LAYERS.values())


def test_benchmark_times_real_pieces():
    samples = cb.benchmark(repeats=3, classes=("avgpool", "grouped"))
    assert set(samples) == {"avgpool", "grouped"}
    for cls, (x, cpu, wall) in samples.items():
        assert x.shape == (3 * len(cb.BENCH_LAYERS[cls]), 4) and cpu.shape == wall.shape == (len(x),)
        assert np.all(cpu > 0) and np.all(wall > 0)
        assert np.all(x[:, 0] == 1.0) and np.all(x[:, 1] > 0)
        # every shape is timed on about a tenth, a half and all of its rows, in that order
        work = x[:, 1].reshape(-1, 3)
        assert np.all(np.diff(work, axis=1) > 0), work.tolist()
        c = cb.fit_costs(x, cpu)
        assert np.all(np.isfinite(c)) and np.all(c >= 0)


def test_core_share_is_a_fraction():
    share, slc = cb.core_share(seconds=0.05)
    assert 0.0 < share <= 1.0 and slc > 0


def test_model_from_run_needs_a_calibrated_run():
    with pytest.raises(ValueError, match="field 'bench' is missing"):
        cb.model_from_run({"flops": [1.0, 1.0]})


def test_fit_link_recovers_latency_and_bandwidth():
    sizes = np.array([4.0, 65536, 524288, 2097152, 8388608])
    tau, bw = 2e-4, 2e9
    got_tau, got_bw = cb.fit_link(sizes, 2 * tau + sizes / bw)
    assert got_tau == pytest.approx(tau, rel=1e-9) and got_bw == pytest.approx(bw, rel=1e-9)
    # 5% noise on the largest message hardly moves the latency (relative weighting)
    noisy = 2 * tau + sizes / bw
    noisy[-1] *= 1.05
    assert cb.fit_link(sizes, noisy)[0] == pytest.approx(tau, rel=0.1)
    # times that do not grow with the size: latency only
    assert cb.fit_link(sizes, np.full(5, 1e-3)) == (pytest.approx(5e-4), math.inf)


@pytest.mark.parametrize("sizes, seconds, match", [
    (np.ones(3), np.ones(3), "field 'sizes'"),
    (np.array([1.0, 2.0]), np.ones(3), "fields 'sizes' and 'seconds'"),
    (np.array([1.0, 2.0]), np.array([1.0, 0.0]), "field 'seconds'"),
    (np.array([1.0, math.inf]), np.array([1.0, 1.0]), "field 'sizes'"),
])
def test_fit_link_bad_input(sizes, seconds, match):
    with pytest.raises(ValueError, match=match):
        cb.fit_link(sizes, seconds)
