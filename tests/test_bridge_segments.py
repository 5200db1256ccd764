"""Plans of MODEL.md section 7 proven numerically (validate --plan) and run across processes (run --plan)."""

from __future__ import annotations

import json
import textwrap

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

from jaxsplit.bridge import trace, torch_zoo  # noqa: E402
from jaxsplit.bridge.pieces import FusedRun, reference_values  # noqa: E402
from jaxsplit.bridge.planning import default_devices, load_model  # noqa: E402
from jaxsplit.bridge.segments import (plan_segments, run_channels, split_channels, split_segment,  # noqa: E402
                                      validate_segments)
from jaxsplit.cli import main  # noqa: E402
from jaxsplit.instance import Device  # noqa: E402

TINY = """
import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = nn.Conv2d(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else None

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (self.down(x) if self.down is not None else x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.block1 = Block(8, 8, 1)
        self.block2 = Block(8, 16, 2)
        self.pool = nn.MaxPool2d(2)
        self.wide = nn.Conv2d(16, 64, 3, padding=1)
        self.head = nn.Linear(64, 256)

    def forward(self, x):
        y = self.pool(self.block2(self.block1(torch.relu(self.stem(x)))))
        y = torch.relu(self.wide(y))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def make():
    return Net(), (3, 32, 32)
"""

#: Slow cores and a slow link: the best plan of the tiny net fuses both residual blocks (with the
#: pool) and splits `wide` by channels, every device with a share of each.
TINY_CLUSTER = [{"flops": 1e8}, {"flops": 2e8, "bandwidth": 1e9, "latency": 1e-3}]


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(textwrap.dedent(TINY))
    cluster = tmp_path / "cluster.json"
    cluster.write_text(json.dumps(TINY_CLUSTER))
    return f"{path}:make", str(cluster)


def _traced(model: nn.Module, shape, dtype=torch.float64):
    model = model.eval().to(dtype)
    for m in model.modules():  # non-trivial batch norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return trace(model, x), x


def test_channel_pieces_equal_torch_conv_and_linear():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.ZeroPad2d((1, 0, 2, 1)), nn.Conv2d(5, 7, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2)))
    traced, x = _traced(conv, (2, 5, 11, 9))
    op, module = traced.ops[0], conv[1]
    want = module(nn.functional.pad(x, (1, 0, 2, 1)))  # torch's own layer
    got = torch.cat([run_channels(op, module, x, a, n) for a, n in ((0, 3), (3, 0), (3, 4))], dim=1)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=0, atol=1e-12)
    lin = nn.Linear(6, 10).double()
    h = torch.randn(3, 6, dtype=torch.float64)
    lin_op = trace(nn.Sequential(nn.Flatten(), lin), (6, 1, 1)).ops[0]
    parts = [run_channels(lin_op, lin, h, a, n) for a, n in ((0, 4), (4, 6))]
    assert torch.allclose(torch.cat(parts, dim=1), lin(h), rtol=0, atol=1e-12)
    error, read = split_channels(traced, reference_values(traced, x), 0, [2, 0, 5])
    assert error <= 1e-12 and read == [11, 0, 11]  # the whole input to every device with channels


def test_channel_splits_refuse_grouped_convs_and_bad_sums():
    traced, x = _traced(nn.Sequential(nn.Conv2d(4, 8, 3, groups=2)), (1, 4, 8, 8))
    values = reference_values(traced, x)
    with pytest.raises(ValueError, match="groups 1"):
        split_channels(traced, values, 0, [4, 4])
    with pytest.raises(ValueError, match="groups 1"):
        validate_segments(traced, x, [{"layers": [0, 1], "partition": "channels", "split": [4, 4]}])
    traced, x = _traced(nn.Sequential(nn.Conv2d(4, 8, 3)), (1, 4, 8, 8))
    with pytest.raises(ValueError, match="must sum to 8"):
        validate_segments(traced, x, [{"layers": [0, 1], "partition": "channels", "split": [4, 3]}])


def test_residual_block_segment_ends_at_the_residual_sum(tiny):
    model, shape = load_model(tiny[0])
    traced, x = _traced(model, (1, *shape[1:]))
    # layers: stem, block1.conv1, block1.conv2, block2.conv1, block2.conv2, block2.down, pool, wide, head
    run = FusedRun.segment(traced, 3, 6)  # block2 with its 1x1 downsample shortcut
    assert len(run.outputs) == 1
    out = traced.nodes()[run.outputs[0]]
    assert out.target is torch.relu and out.args[0].target.__name__ == "add"  # the activated sum
    assert run.out_height == 16
    values = reference_values(traced, x)
    error, read = split_segment(traced, values, 3, 6, [5, 0, 11])
    # output rows 0..4 need conv1's rows 0..5, which read input rows 0..11 (the 1x1 shortcut's 0..8 inside)
    assert error <= 1e-10 and read[1] == 0 and read[0] == 12
    # a corrupted reference of the output is caught, so the comparison is really made
    bad = dict(values)
    bad[run.outputs[0]] = values[run.outputs[0]] * (1 + 1e-6)
    assert split_segment(traced, bad, 3, 6, [8, 8])[0] > 1e-10
    # the identity shortcut of block1: the sum of the stem's relu and the block's last conv
    error, _ = split_segment(traced, values, 0, 3, [10, 22])
    assert error <= 1e-10
    with pytest.raises(ValueError, match="sum to the height of its output, 16"):
        split_segment(traced, values, 3, 6, [8, 9])


@pytest.mark.slow
def test_plan_of_a_residual_torch_model_passes_and_fuses_the_blocks(tiny, capsys):
    model, cluster = tiny
    assert main(["validate", "--model", model, "--cluster", cluster, "--plan", "fused", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] and out["plan"] == "fused" and out["devices"] == 2
    segs = [(s["layers"], s["partition"]) for s in out["segments"]]
    assert ([0, 3], "rows") in segs and ([3, 7], "rows") in segs and ([7, 8], "channels") in segs
    assert all(s["passed"] and s["max_error"] <= 1e-10 and s["tolerance"] == 1e-10 for s in out["segments"])
    assert sum(s["latency"] for s in out["segments"]) == pytest.approx(out["latency"], rel=1e-5)


@pytest.mark.slow
def test_peer_plan_table_in_float32(tiny, capsys):
    model, cluster = tiny
    assert main(["validate", "--model", model, "--cluster", cluster, "--plan", "aofl", "--dtype", "float32"]) == 0
    text = capsys.readouterr().out
    assert "plan aofl" in text and "all segments pass" in text and "1e-05" in text


@pytest.mark.parametrize("extra, match", [
    (["--plan", "fused", "--fused", "0:2"], "give either --fused or --plan"),
    (["--plan", "aofl", "--solver", "exact"], "has its own split rule"),
    (["--plan", "fused", "--solver", "lp"], "does not split a fused segment"),
])
def test_validate_plan_bad_options_are_one_line(tiny, capsys, extra, match):
    assert main(["validate", "--model", tiny[0], "--cluster", tiny[1], *extra]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_layer_plan_segments_are_todays_split(tiny, capsys):
    model, cluster = tiny
    assert main(["validate", "--model", model, "--cluster", cluster, "--plan", "layer", "--solver", "equal",
                 "--json"]) == 0
    segs = json.loads(capsys.readouterr().out)["segments"]
    assert [s["layers"] for s in segs] == [[i, i + 1] for i in range(9)]
    assert segs[0]["split"] == [16, 16] and all(s["partition"] == "rows" for s in segs)


#: Three clusters per zoo model: the built-in one, a slow link that favours fusing, and shares with
#: a fast link that favours channel splits.
ZOO_CLUSTERS = [
    default_devices(3),
    (Device(5e9), Device(2e10, 1.25e7, 2e-3), Device(5e10, 2.5e7, 5e-3)),
    (Device(1e10), Device(1e11, 2.5e8, 2e-4, 0.5), Device(5e10, 2.5e8, 1e-4, 0.75)),
]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(torch_zoo.MODELS))
def test_every_zoo_models_best_plan_passes_on_three_clusters(name):
    model, shape = load_model(name, (64, 64))
    traced, x = _traced(model, shape)
    kinds = set()
    for devices in ZOO_CLUSTERS:
        segments, latency = plan_segments(traced.layers, devices, "fused")
        reports = validate_segments(traced, x, segments)
        bad = [(r.layers, r.partition, r.split, r.max_error) for r in reports if not r.passed]
        assert not bad, f"{name} on {devices}: {bad}"
        assert all(r.tolerance == 1e-10 for r in reports)
        kinds |= {"fused" if r.layers[1] - r.layers[0] > 1 else r.partition for r in reports}
    assert "fused" in kinds, f"{name}: no plan fused any layers"


@pytest.mark.slow
def test_run_plan_fused_with_two_workers(tiny, capsys):
    model, cluster = tiny
    code = main(["run", "--model", model, "--cluster", cluster, "--plan", "fused", "--repeats", "2",
                 "--timeout", "60", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["passed"]
    plan = out["plan"]
    assert plan["plan"] == "fused" and plan["max_error"] <= 1e-5 and out["max_error"] <= 1e-5
    segs = plan["segments"]
    assert [s["layers"] for s in segs] == [[0, 3], [3, 7], [7, 8], [8, 9]]
    assert segs[2]["partition"] == "channels" and min(segs[2]["split"]) > 0
    assert all(s["measured"] > 0 and s["latency"] > 0 for s in segs)
    # both processes computed a piece of every split segment
    assert all(min(c) > 0 for s, c in zip(segs, (s["compute_times"] for s in segs)) if min(s["split"]) > 0)
    assert plan["request_time"] >= 0.5 * sum(s["measured"] for s in segs)
    assert len(out["layer_times"]) == 9 and out["request_time"] > 0
