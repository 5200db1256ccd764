"""The messages of a distributed run (:mod:`jaxsplit.bridge.distributed`): command codes and tags,
the run's specification every rank builds from, the header every command starts with, bounded waits, and the shapes of what each piece sends.

A command is an 8-element int64 header on tag ``_TAG_HEADER`` (``cmd, i, start, rows, lo, hi,
batch, size``), then the piece's input on ``_TAG_DATA``; a worker answers with its output on
``_TAG_OUT`` and its (wall-clock, CPU) compute time in seconds on ``_TAG_TIME``.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Any, Sequence

import numpy as np
import torch

from .graph import LayerOp, TracedModel
from .pieces import FusedRun

_PIECE, _STOP, _PING, _FLOPS, _BENCH, _SHARE, _SEGMENT, _CHANNELS = 1, 2, 3, 4, 5, 6, 7, 8

#: A segment of a plan as a run carries it: (first, end, partition, split per device).
Segment = tuple[int, int, str, tuple[int, ...]]
_TAG_HEADER, _TAG_DATA, _TAG_OUT, _TAG_TIME = 10, 11, 12, 13


class RunError(RuntimeError):
    """A distributed run failed (a worker died, a wait timed out, the rendezvous failed)."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything a rank needs to build the same model and plan (picklable).

    Attributes:
      model: a zoo name, ``torchvision:NAME`` or ``PATH.py:FACTORY``.
      input_size: (H, W) or None for the model's own.
      rows: (L, N) output rows per device per layer; N is the number of ranks.
      dtype: ``"float32"`` or ``"float64"``.
      seed: seed of the weights and the input.
      timeout: seconds any single wait may take before the run fails.
      repeats: timed runs of the whole request (after one warm-up run).
      threads: torch intra-op threads per process.
      calibrate: also run the calibration microbenchmarks (MODEL.md's one FLOP/s per device, link
        bandwidth and latency, and the per-class cost model of :mod:`jaxsplit.bridge.calibration`).
      plans: further plans (MODEL.md section 7) timed in the same requests as the per-layer plan
        ``rows``, each a tuple of segments ``(first, end, "rows" | "channels", split per device)``
        covering the layers in order.
    """

    model: str
    input_size: tuple[int, int] | None
    rows: tuple[tuple[int, ...], ...]
    dtype: str = "float32"
    seed: int = 0
    timeout: float = 60.0
    repeats: int = 1
    threads: int = 1
    calibrate: bool = False
    plans: tuple[tuple[Segment, ...], ...] = ()

    @property
    def world_size(self) -> int:
        return len(self.rows[0])


def _header(cmd: int, i: int = 0, start: int = 0, rows: int = 0, lo: int = 0, hi: int = 0, batch: int = 0,
            size: int = 0) -> torch.Tensor:
    """The (8,) int64 header of a command."""
    return torch.tensor([cmd, i, start, rows, lo, hi, batch, size], dtype=torch.int64)


def _wait(work: Any, timeout: float, what: str) -> None:
    try:
        work.wait(timeout=datetime.timedelta(seconds=timeout))
    except RuntimeError as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RunError(f"{what} failed (timeout {timeout:g} s, or the peer died): {msg}") from None


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One contiguous 1-D tensor of several (one message)."""
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def _unflat(flat: torch.Tensor, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """The tensors of :func:`_flat` back in their shapes."""
    out, at = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[at:at + size].reshape(shape))
        at += size
    return out


def _segment_shapes(traced: TracedModel, run: FusedRun, plan: Any, batch: int
                    ) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Shapes of a fused piece's external inputs (in ``plan.externals`` order) and of its outputs."""
    def rows_shape(name: str) -> tuple[int, ...]:
        _, c, _, w = traced.shapes[name]
        lo, hi = plan.need[name]
        return (batch, c, hi - lo, w)

    return [rows_shape(k) for k in plan.externals], [rows_shape(o) for o in run.outputs]


def _channels_shapes(traced: TracedModel, op: LayerOp, batch: int, count: int
                     ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of a channels piece's input (the whole tensor) and of its ``count`` output channels."""
    if op.kind == "linear":
        return (batch, op.layer.in_channels), (batch, count)
    _, c, h, w = traced.shapes[op.input]
    return (batch, c, h, w), (batch, count, op.layer.out_height, op.layer.out_width)


def _piece_shapes(op: LayerOp, batch: int, lo: int, hi: int, rows: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    layer = op.layer
    if layer.kind == "linear":
        return (batch, layer.in_channels), (batch, layer.out_channels)
    return (batch, layer.in_channels, hi - lo, layer.in_width), (batch, layer.out_channels, rows, layer.out_width)


_BUSY: dict[torch.dtype, tuple[torch.nn.Module, torch.Tensor]] = {}


def _busy(dtype: torch.dtype) -> None:
    """A short convolution (about 20 MFLOP), the compute of a small piece."""
    if dtype not in _BUSY:
        _BUSY[dtype] = (torch.nn.Conv2d(32, 32, 3, padding=1).to(dtype), torch.randn(1, 32, 32, 32, dtype=dtype))
    conv, x = _BUSY[dtype]
    with torch.no_grad():
        conv(x)


def calibrate_flops(dtype: torch.dtype, seconds: float = 0.3) -> float:
    """Sustained FLOP/s of this process on a 3x3 convolution (64 -> 64 channels, 56x56).

    The convolution is repeated for ``seconds`` and the total work is divided by the total time, so
    that time-sharing of the cores with other processes (all ranks calibrate at once) is included.
    """
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(dtype)
    x = torch.randn(1, 64, 56, 56, dtype=dtype)
    flop = 2.0 * 56 * 56 * 64 * 64 * 9
    with torch.no_grad():
        conv(x)
        count, t0 = 0, time.perf_counter()
        while True:
            conv(x)
            count += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return flop * count / elapsed
