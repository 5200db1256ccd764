"""A real split run across processes on loopback (torch.distributed, gloo), bounded in time."""

from __future__ import annotations

import socket
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxsplit import zoo  # noqa: E402
from jaxsplit.bridge.distributed import RunError, RunSpec, check_port, launch_local  # noqa: E402
from jaxsplit.bridge.planning import default_devices, plan_rows  # noqa: E402


@pytest.mark.slow
def test_two_workers_match_the_unsplit_model():
    layers = zoo.get("resnet18", (64, 64))
    rows, _ = plan_rows(layers, default_devices(2), "equal")
    assert (rows[:-1] > 0).sum(axis=1).max() == 2  # both ranks really compute pieces
    spec = RunSpec("resnet18", (64, 64), tuple(map(tuple, rows.tolist())), "float32", timeout=30.0,
                   repeats=1, calibrate=True)
    res = launch_local(spec, deadline=150.0)
    assert res["max_error"] <= 1e-5
    assert res["output_shape"] == [1, 1000]
    assert res["names"] == [l.name for l in layers]
    assert len(res["layer_times"]) == len(layers) and min(res["layer_times"]) > 0
    assert res["request_time"] >= sum(res["layer_times"]) * 0.5
    assert len(res["flops"]) == 2 and min(res["flops"]) > 0
    assert res["latency"][1] >= 0 and res["bandwidth"][1] > 0
    # per-class calibration: every rank's microbenchmarks and core shares, and a model from them
    from jaxsplit.bridge.calibration import CLASSES, layer_latencies, model_from_run

    model = model_from_run(res)
    assert model.coef.shape == (2, len(CLASSES), 4) and np.all(model.coef >= 0)
    assert np.all((model.share > 0) & (model.share <= 1)) and model.share.shape == (2, 2)
    assert len(res["core_share"]) == 2 and [len(g) for g in res["core_share"]] == [1, 2]
    cpu = np.asarray(res["compute_cpu_times"])
    assert cpu.shape == rows.shape and np.all(cpu[rows > 0] > 0) and np.all(cpu[rows == 0] == 0)
    pred, _ = layer_latencies(layers, rows, model, res["bandwidth"], res["latency"])
    assert pred.shape == (len(layers),) and np.all(pred > 0)


def test_port_taken_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(ValueError, match=f"port {port} on 127.0.0.1 is taken"):
            check_port("127.0.0.1", port)
        spec = RunSpec("alexnet", (64, 64), ((1, 0),) * 11, timeout=5.0)
        with pytest.raises(ValueError, match="taken"):
            launch_local(spec, master_port=port)
    with pytest.raises(ValueError, match="master_port"):
        check_port("127.0.0.1", 70000)


@pytest.mark.slow
def test_a_dying_worker_fails_the_run_without_hanging(tmp_path):
    path = tmp_path / "dying.py"
    path.write_text(textwrap.dedent("""
        import os
        import torch.distributed as dist
        import torch.nn as nn

        def make():
            if dist.is_initialized() and dist.get_rank() == 1:
                os._exit(7)
            return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), (3, 16, 16)
    """))
    spec = RunSpec(f"{path}:make", None, ((8, 8),), timeout=10.0)
    with pytest.raises(RunError, match="rank"):
        launch_local(spec, deadline=60.0)
