"""Per-class compute-cost calibration of real devices (an extension of MODEL.md section 3).

MODEL.md gives every device one compute rate F_i, so a piece of phi * n FLOP takes phi n / F_i.
Real kernels do not run at one rate: PyTorch's CPU max pooling does hundreds of times fewer of
the model's pool operations per second than a convolution does FLOP, large linear layers are bound
by reading their weights, and every call has a fixed cost. This module fits, per device and per
layer class (:data:`CLASSES`), a linear cost model of one piece

    t = c_call + c_flop * FLOP + c_byte * (input + output bytes) + c_param * parameter bytes

(seconds; all coefficients >= 0) by non-negative least squares, weighted so that every sample counts
by its relative error. The samples come from short microbenchmarks on layer shapes that belong to
none of the zoo models (:data:`BENCH_LAYERS`), run with the same code path as a real piece
(:func:`jaxsplit.bridge.pieces.run_piece`), so the fit is held out from the models it predicts.

The cost model is fitted on the CPU time of the computing thread, which excludes the time other
processes held the core. Where devices share one machine's cores (with each other, or with other
jobs), a piece takes longer in wall-clock time, and how much depends on its length: a process that
waited for a message runs uninterrupted for a while (a scheduler time slice g) and from then on
gets its fair share s of a core. :class:`ComputeModel` therefore stretches a piece of CPU time d to

    wall = min(d, g) + max(d - g, 0) / s,

with s and g measured per device and per number k of devices computing at once
(:func:`core_share`, :func:`contention`): s = 1 (g irrelevant) on a device with a core to itself.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

import numpy as np

from ..layers import Layer

#: Layer classes with their own cost model: dense convolution, grouped/depthwise convolution,
#: max pooling, average pooling, linear.
CLASSES = ("conv", "grouped", "maxpool", "avgpool", "linear")
#: Features of one piece, in the order of the cost coefficients.
FEATURES = ("call", "flop", "bytes", "param_bytes")


def layer_class(layer: Layer) -> str:
    """The cost class of a layer: its kind, with grouped convolutions (groups > 1) apart."""
    if layer.kind == "conv" and layer.groups > 1:
        return "grouped"
    return layer.kind


def piece_features(layer: Layer, start: int, rows: int, q: float = 4.0) -> np.ndarray:
    """Features (:data:`FEATURES`) of the piece of output rows ``[start, start + rows)``.

    Returns a float64 array of shape (4,): 1 (one call), FLOP (``phi * rows``), bytes read and written
    (input rows with halo and output rows, ``q`` bytes per element), parameter bytes (weights).
    All zero for ``rows == 0`` (no piece, no call).
    """
    if rows < 0 or start < 0 or start + rows > layer.out_height:
        raise ValueError(f"field 'rows': [{start}, {start + rows}) is not within the {layer.out_height} output "
                         f"rows of layer '{layer.name}'")
    if rows == 0:
        return np.zeros(len(FEATURES))
    kh, kw = layer.kernel
    if layer.kind == "linear":
        moved = (layer.in_channels + layer.out_channels) * q
        params = layer.in_channels * layer.out_channels * q
    else:
        lo, hi = layer.input_rows(start, rows)
        moved = ((hi - lo) * layer.in_width * layer.in_channels + rows * layer.out_width * layer.out_channels) * q
        params = layer.out_channels * (layer.in_channels // layer.groups) * kh * kw * q if layer.kind == "conv" else 0.0
    return np.array([1.0, layer.row_work * rows, float(moved), float(params)])


def fit_costs(features: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Fit the cost coefficients of one class from timed samples (relative-error weighted NNLS).

    Args:
      features: (S, 4) piece features (:func:`piece_features`), S >= 2.
      seconds: (S,) measured times, positive.
    Returns:
      (4,) non-negative coefficients: s per call, s per FLOP, s per byte moved, s per parameter byte.
    Raises:
      ValueError: shapes do not match, fewer than two samples, or a non-finite/non-positive value.
    """
    from scipy.optimize import nnls

    x = np.asarray(features, np.float64)
    y = np.asarray(seconds, np.float64)
    if x.ndim != 2 or x.shape[1] != len(FEATURES):
        raise ValueError(f"field 'features' must have shape (S, {len(FEATURES)}), got {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"field 'seconds' must have shape ({x.shape[0]},), got {y.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"field 'seconds': at least 2 samples are needed to fit, got {x.shape[0]}")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError(f"field 'seconds' must be positive and finite, got {y[~(np.isfinite(y) & (y > 0))][0]!r}")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError("field 'features' must be finite and non-negative")
    w = 1.0 / y
    scale = x.max(axis=0)
    scale[scale == 0] = 1.0  # a feature that is always 0 (pool parameters) gets coefficient 0
    coef, _ = nnls(x / scale * w[:, None], y * w)
    return coef / scale


@dataclasses.dataclass(frozen=True)
class ComputeModel:
    """Calibrated compute costs of N devices.

    Attributes:
      coef: (N, len(CLASSES), 4) cost coefficients per device and class (:func:`fit_costs`); they give
        a piece's CPU time.
      share: (N, N) share of a core in (0, 1] of device i while k devices compute at once, at
        ``[i, k - 1]``; all ones for devices with a core each to themselves.
      slice: (N, N) seconds device i computes uninterrupted before it gets only its share (may be inf).
    """

    coef: np.ndarray
    share: np.ndarray
    slice: np.ndarray

    def __post_init__(self) -> None:
        coef = np.asarray(self.coef, np.float64)
        share = np.asarray(self.share, np.float64)
        slc = np.asarray(self.slice, np.float64)
        if coef.ndim != 3 or coef.shape[1:] != (len(CLASSES), len(FEATURES)):
            raise ValueError(f"field 'coef' must have shape (N, {len(CLASSES)}, {len(FEATURES)}), got {coef.shape}")
        if not np.all(np.isfinite(coef)) or np.any(coef < 0):
            raise ValueError("field 'coef' must be finite and non-negative")
        n = coef.shape[0]
        if share.shape != (n, n) or not np.all((share > 0) & (share <= 1)):
            raise ValueError(f"field 'share' must be an ({n}, {n}) array of values in (0, 1], got {share.tolist()}")
        if slc.shape != (n, n) or np.any(np.isnan(slc)) or np.any(slc < 0):
            raise ValueError(f"field 'slice' must be an ({n}, {n}) array of non-negative seconds, got {slc.tolist()}")
        object.__setattr__(self, "coef", coef)
        object.__setattr__(self, "share", share)
        object.__setattr__(self, "slice", slc)

    @classmethod
    def dedicated(cls, coef: np.ndarray) -> "ComputeModel":
        """Devices with a core each to themselves (wall-clock time = CPU time)."""
        n = np.asarray(coef).shape[0]
        return cls(coef, np.ones((n, n)), np.full((n, n), np.inf))

    @property
    def n_devices(self) -> int:
        return self.coef.shape[0]

    def cpu_time(self, device: int, layer: Layer, start: int, rows: int, q: float = 4.0) -> float:
        """CPU time (s) of a piece on ``device`` (0 when rows == 0)."""
        if rows == 0:
            return 0.0
        c = self.coef[device, CLASSES.index(layer_class(layer))]
        return float(piece_features(layer, start, rows, q) @ c)

    def piece_time(self, device: int, layer: Layer, start: int, rows: int, concurrent: int = 1,
                   q: float = 4.0) -> float:
        """Wall-clock compute time (s) of a piece on ``device`` while ``concurrent`` devices compute."""
        if not 1 <= concurrent <= self.n_devices:
            raise ValueError(f"field 'concurrent' must be in 1..{self.n_devices}, got {concurrent}")
        d = self.cpu_time(device, layer, start, rows, q)
        s, g = self.share[device, concurrent - 1], self.slice[device, concurrent - 1]
        return float(min(d, g) + max(d - g, 0.0) / s)

    def effective_flops(self, layer: Layer) -> np.ndarray:
        """(N,) FLOP/s each device reaches on the whole layer alone (phi H_out / its predicted time)."""
        return np.array([layer.work / self.piece_time(i, layer, 0, layer.out_height) for i in range(self.n_devices)])


def contention(alone: Sequence[Sequence[float]], together: Sequence[Sequence[Sequence[float]]]
               ) -> tuple[np.ndarray, np.ndarray]:
    """(N, N) core shares and slices of N devices from :func:`core_share` measurements.

    Args:
      alone: N pairs (share, slice): every device computing alone.
      together: N lists; ``together[k - 1]`` holds the (share, slice) pairs of devices 0..k-1
        computing at once (``together[0]`` is device 0 alone again).
    Returns:
      ``share[i, k - 1]`` and ``slice[i, k - 1]``: measured in group k where device i belongs to it
      (i < k); otherwise device i's own alone share times the group's mean ratio of shares together
      to shares alone, and its alone slice.
    Raises:
      ValueError: wrong lengths, a share outside (0, 1], or a negative or NaN slice.
    """
    n = len(alone)
    if len(together) != n or any(len(together[k]) != k + 1 for k in range(n)):
        raise ValueError(f"field 'together' must hold lists of lengths 1..{n} (one per group of devices "
                         f"0..k-1), got lengths {[len(t) for t in together]}")
    pairs = [("alone", i, p) for i, p in enumerate(alone)]
    pairs += [(f"together[{k}]", i, p) for k, t in enumerate(together) for i, p in enumerate(t)]
    for name, i, p in pairs:
        ok = len(p) == 2 and 0.0 < float(p[0]) <= 1.0 and not math.isnan(float(p[1])) and float(p[1]) >= 0
        if not ok:
            raise ValueError(f"field '{name}[{i}]' must be (share in (0, 1], slice >= 0 s), got {tuple(p)!r}")
    share, slc = np.zeros((n, n)), np.zeros((n, n))
    for k in range(n):
        ratio = float(np.mean([together[k][j][0] / alone[j][0] for j in range(k + 1)]))
        for i in range(n):
            if i <= k:
                share[i, k], slc[i, k] = together[k][i]
            else:
                share[i, k], slc[i, k] = min(1.0, alone[i][0] * ratio), alone[i][1]
    return share, slc


def compute_times(layers: Sequence[Layer], rows: np.ndarray, model: ComputeModel, q: float = 4.0) -> np.ndarray:
    """Predicted compute time (s) of every piece, shape (L, N), for a plan ``rows`` (L, N)."""
    rows = np.asarray(rows, np.int64)
    if rows.shape != (len(layers), model.n_devices):
        raise ValueError(f"field 'rows' must have shape ({len(layers)}, {model.n_devices}), got {rows.shape}")
    out = np.zeros(rows.shape)
    for l, layer in enumerate(layers):
        k = int((rows[l] > 0).sum())
        starts = np.concatenate([[0], np.cumsum(rows[l])[:-1]])
        for i in range(model.n_devices):
            out[l, i] = model.piece_time(i, layer, int(starts[i]), int(rows[l, i]), max(k, 1), q)
    return out


def layer_latencies(layers: Sequence[Layer], rows: np.ndarray, model: ComputeModel, bandwidth: Sequence[float],
                    latency: Sequence[float], q: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """MODEL.md section 3's layer latency with the calibrated compute term.

    T_i = 2 tau_i + (input + output bytes) / B_i + (calibrated compute time of the piece), layer = max_i T_i.
    Returns (L,) layer latencies and (L, N) compute times, seconds.
    """
    comp = compute_times(layers, rows, model, q)
    rows = np.asarray(rows, np.int64)
    out = np.zeros(len(layers))
    for l, layer in enumerate(layers):
        starts = np.concatenate([[0], np.cumsum(rows[l])[:-1]])
        worst = 0.0
        for i, n in enumerate(rows[l]):
            if n == 0:
                continue
            t = comp[l, i]
            if math.isfinite(bandwidth[i]):
                f = piece_features(layer, int(starts[i]), int(n), q)
                t += 2.0 * latency[i] + f[2] / bandwidth[i]
            worst = max(worst, t)
        out[l] = worst
    return out, comp


def fit_link(sizes: np.ndarray, seconds: np.ndarray) -> tuple[float, float]:
    """Message latency tau (s) and bandwidth B (bytes/s) from round-trip times ``2 tau + bytes / B``.

    Least squares weighted by relative error (a small message's time counts as much as a large
    one's; unweighted, the noise of the largest messages decides the intercept).

    Args:
      sizes: (S,) bytes sent per round trip, at least two different sizes.
      seconds: (S,) round-trip times, positive.
    Returns:
      (tau >= 0, B > 0; inf when the times do not grow with the size).
    Raises:
      ValueError: shapes differ, fewer than two distinct sizes, or a non-positive or non-finite time.
    """
    x = np.asarray(sizes, np.float64)
    y = np.asarray(seconds, np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"fields 'sizes' and 'seconds' must be 1-D of one length, got {x.shape} and {y.shape}")
    if len(np.unique(x)) < 2 or np.any(x < 0) or not np.all(np.isfinite(x)):
        raise ValueError(f"field 'sizes' must hold at least two different byte counts >= 0, got {x.tolist()}")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError(f"field 'seconds' must be positive and finite, got {y.tolist()}")
    a = np.column_stack([np.ones_like(x), x]) / y[:, None]
    (intercept, slope), *_ = np.linalg.lstsq(a, np.ones_like(y), rcond=None)
    if slope <= 0:  # no measurable transfer cost: all of it is latency
        return float(np.median(y) / 2.0), math.inf
    if intercept < 0:  # no measurable latency: refit through the origin
        slope = float(np.sum(x * y) / np.sum(x * x))
        return 0.0, 1.0 / slope
    return float(intercept / 2.0), float(1.0 / slope)


# ----------------------------------------------------------------------------------- microbenchmarks
#: Held-out layer shapes for the microbenchmarks, per class: (module constructor arguments, input
#: (C, H, W) or in_features). None of them is a layer of the zoo models; they span the zoo's range of
#: channels, widths and work per call. Every shape is timed for several row counts.
BENCH_LAYERS: dict[str, list[tuple[tuple, tuple]]] = {
    "conv": [((3, 32, 3, 1, 1), (3, 160, 160)), ((3, 48, 7, 2, 3), (3, 160, 160)),
             ((32, 48, 3, 1, 1), (32, 200, 200)), ((96, 128, 3, 1, 1), (96, 96, 96)),
             ((24, 48, 3, 1, 1), (24, 80, 80)), ((48, 96, 3, 1, 1), (48, 60, 60)),
             ((96, 96, 3, 1, 1), (96, 40, 40)), ((160, 160, 3, 1, 1), (160, 20, 20)),
             ((192, 384, 3, 1, 1), (192, 12, 12)), ((384, 384, 3, 1, 1), (384, 10, 10)),
             ((640, 640, 3, 1, 1), (640, 5, 5)), ((96, 192, 1, 1, 0), (96, 28, 28)),
             ((192, 384, 1, 2, 0), (192, 20, 20)), ((80, 160, 3, 2, 1), (80, 30, 30))],
    "grouped": [((48, 48, 3, 1, 1, 48), (48, 80, 80)), ((192, 192, 3, 2, 1, 192), (192, 30, 30)),
                ((400, 400, 3, 1, 1, 400), (400, 10, 10)), ((64, 64, 3, 1, 1, 8), (64, 40, 40))],
    "maxpool": [((2, 2), (40, 200, 200)), ((2, 2), (48, 160, 160)), ((2, 2), (96, 80, 80)), ((3, 2, 1), (80, 90, 90)),
                ((2, 2), (320, 20, 20)), ((2, 2), (640, 10, 10))],
    "avgpool": [((2, 2), (48, 80, 80)), ((3, 2, 1), (160, 30, 30)), ((2, 2), (320, 12, 12))],
    "linear": [((12288, 4096), ()), ((8192, 2048), ()), ((3072, 3072), ()), ((2048, 900), ()), ((768, 500), ()), ((256, 100), ())],
}


def _bench_module(cls: str, args: tuple):
    import torch.nn as nn

    if cls in ("conv", "grouped"):
        cin, cout, k, s, p, *g = args
        return nn.Conv2d(cin, cout, k, s, p, groups=g[0] if g else 1)
    if cls == "maxpool":
        return nn.MaxPool2d(*args)
    if cls == "avgpool":
        return nn.AvgPool2d(*args)
    return nn.Linear(*args)


#: Bytes written between two timed calls so that every call starts with cold caches, as a layer of
#: a request does (the whole model's weights and activations pass through the caches between two
#: calls of one layer). Larger than the last-level cache of common CPUs.
FLUSH_BYTES = 64 << 20
_FLUSH: list = []


def _flush_caches() -> None:
    if not _FLUSH:
        _FLUSH.append(np.zeros(FLUSH_BYTES // 8))
    _FLUSH[0] += 1.0


def _median_time(fn, repeats: int, cold: bool = True) -> tuple[float, float]:
    """Median wall-clock and median CPU time of this thread (s) of ``fn()`` after one warm-up call.

    With ``cold``, the caches are flushed (:data:`FLUSH_BYTES` written) before every timed call."""
    fn()  # warm-up (allocations, kernel selection)
    wall, cpu = [], []
    for _ in range(repeats):
        if cold:
            _flush_caches()
        c0, t0 = time.thread_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


#: A call that took this much longer in wall-clock than in CPU time was interrupted (s).
PREEMPTED = 2e-4


def core_share(dtype_name: str = "float32", seconds: float = 0.3) -> tuple[float, float]:
    """This process's share of a core and its time slice while it computes back to back.

    Runs a 3x3 convolution (64 -> 64 channels, 28x28, about 0.3 ms) for ``seconds``. Returns
    (share, slice): share = CPU time / wall time (1 on a core of its own; less while other
    processes, other devices on the same machine or other jobs, take turns on the cores), and
    slice = CPU time / number of calls interrupted for longer than :data:`PREEMPTED` (the time it
    computes between two interruptions; inf if none was).
    """
    import torch

    dtype = {"float32": torch.float32, "float64": torch.float64}[dtype_name]
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(dtype)
    x = torch.randn(1, 64, 28, 28, dtype=dtype)
    cpu_total, preempted = 0.0, 0
    with torch.no_grad():
        conv(x)
        start = time.perf_counter()
        while True:
            c0, t0 = time.thread_time(), time.perf_counter()
            conv(x)
            c1, t1 = time.thread_time(), time.perf_counter()
            cpu_total += c1 - c0
            preempted += (t1 - t0) - (c1 - c0) > PREEMPTED
            if t1 - start >= seconds:
                break
    share = min(1.0, max(cpu_total / (t1 - start), 1e-3))
    return share, (cpu_total / preempted if preempted else math.inf)


def benchmark(dtype_name: str = "float32", repeats: int = 5, classes: Sequence[str] = CLASSES,
              seed: int = 0, cold: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Time pieces of :data:`BENCH_LAYERS` in this process with :func:`run_piece` (median of repeats).

    Every shape is timed whole and on about a half and a tenth of its output rows (a piece in the
    middle of the image), so that the fit sees the call cost and the halo; with ``cold`` every timed
    call starts with flushed caches, as in a request. The CPU time of the
    calling thread is what the cost model is fitted on (it excludes time other processes took the
    core; run with one torch thread). Returns class -> ((S, 4) features, (S,) CPU seconds,
    (S,) wall-clock seconds).
    """
    import torch

    from .graph import trace
    from .pieces import run_piece

    dtype = {"float32": torch.float32, "float64": torch.float64}[dtype_name]
    q = float(torch.empty((), dtype=dtype).element_size())
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for cls in classes:
        feats, secs, walls = [], [], []
        for args, shape in BENCH_LAYERS[cls]:
            module = _bench_module(cls, args).to(dtype).eval()
            if cls == "linear":  # traced behind a flatten, as a classifier head is
                x = torch.randn((1, args[0]), generator=gen, dtype=dtype)
                traced = trace(torch.nn.Sequential(torch.nn.Flatten(), module), x[:, :, None, None])
            else:
                x = torch.randn((1, *shape), generator=gen, dtype=dtype)
                traced = trace(torch.nn.Sequential(module), x)
            op = traced.ops[0]
            mod = traced.module(op)
            layer = op.layer
            h_out = layer.out_height
            for rows in sorted({h_out, max(1, h_out // 2), max(1, h_out // 10)}):
                start = (h_out - rows) // 2
                lo, hi = (0, 1) if cls == "linear" else layer.input_rows(start, rows)
                xin = x if cls == "linear" else x[:, :, lo:hi].contiguous()
                with torch.no_grad():
                    wall, cpu = _median_time(lambda: run_piece(op, mod, xin, lo, start, rows), repeats, cold)
                feats.append(piece_features(layer, start, rows, q))
                secs.append(max(cpu, 1e-7))  # thread clocks tick coarsely on some systems
                walls.append(wall)
        out[cls] = (np.asarray(feats), np.asarray(secs), np.asarray(walls))
    return out


def fit_device(samples: dict[str, tuple[np.ndarray, ...]]) -> np.ndarray:
    """(len(CLASSES), 4) coefficients of one device from :func:`benchmark`'s samples (every class needed).

    ``samples[c]`` is (features (S, 4), seconds (S,), ...); further entries are ignored."""
    missing = [c for c in CLASSES if c not in samples]
    if missing:
        raise ValueError(f"field 'samples' has no samples of class {missing[0]!r}")
    return np.stack([fit_costs(samples[c][0], samples[c][1]) for c in CLASSES])


def pack(samples: dict[str, tuple[np.ndarray, ...]]) -> np.ndarray:
    """Flatten :func:`benchmark`'s samples into one float64 array (to send between processes)."""
    rows = []
    for k, c in enumerate(CLASSES):
        if c in samples:
            f, *times = samples[c]
            rows.append(np.column_stack([np.full(len(f), k), f, *times]))
    return np.concatenate(rows).ravel() if rows else np.zeros(0)


def unpack(flat: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Inverse of :func:`pack` (samples with features, CPU seconds and wall seconds)."""
    width = 1 + len(FEATURES) + 2
    flat = np.asarray(flat, np.float64)
    if flat.size % width:
        raise ValueError(f"field 'samples': {flat.size} values are not rows of {width}")
    table = flat.reshape(-1, width)
    out = {}
    for k, c in enumerate(CLASSES):
        t = table[table[:, 0] == k]
        if len(t):
            out[c] = (t[:, 1:1 + len(FEATURES)], t[:, -2], t[:, -1])
    return out


def model_from_run(result: dict) -> ComputeModel:
    """The calibrated :class:`ComputeModel` of a calibrated run's result (:func:`launch_local`)."""
    for key in ("bench", "core_share_alone", "core_share"):
        if key not in result:
            raise ValueError(f"field '{key}' is missing: the run was not calibrated")
    coef = np.stack([fit_device(unpack(np.asarray(b))) for b in result["bench"]])
    share, slc = contention(result["core_share_alone"], result["core_share"])
    return ComputeModel(coef, share, slc)
