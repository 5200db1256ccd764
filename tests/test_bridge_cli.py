"""The validate and run commands."""

from __future__ import annotations

import json
import textwrap

import pytest

pytest.importorskip("torch")

from jaxsplit.cli import main  # noqa: E402

USER_MODEL = """
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 8, 4, 2))
        self.body = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.pool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = self.pool(y + self.body(y))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def make():
    return Net(), (3, 30, 22)


def not_a_module():
    return 3
"""


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(textwrap.dedent(USER_MODEL))
    return str(path)


def test_validate_zoo_model_json(capsys):
    code = main(["validate", "--model", "yolov2_tiny", "--input-size", "64", "64", "--solver", "equal",
                 "--devices", "3", "--fused", "2:7", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["passed"]
    assert len(out["layers"]) == 15 and all(l["passed"] for l in out["layers"])
    assert out["layers"][0]["rows"] == [22, 21, 21]
    assert out["layers"][0]["input_rows"] == [23, 23, 22]  # one halo row per interior border
    assert out["fused"]["name"] == "layers.4..layers.12" and out["fused"]["redundant_work"] > 0


def test_validate_user_file_table_and_float32(user_file, capsys):
    code = main(["validate", "--model", f"{user_file}:make", "--devices", "4", "--dtype", "float32",
                 "--fused", "0:3"])
    text = capsys.readouterr().out
    assert code == 0
    assert "stem.1" in text and "all layers pass" in text and "fused 0:3" in text


def test_validate_with_cluster_file(user_file, tmp_path, capsys):
    cluster = tmp_path / "c.json"
    cluster.write_text(json.dumps({"devices": [{"flops": 1e9}, {"flops": 3e9, "bandwidth": 1e9, "latency": 0}]}))
    assert main(["validate", "--model", f"{user_file}:make", "--cluster", str(cluster), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["devices"] == 2 and out["passed"]


@pytest.mark.parametrize("args, match", [
    (["--model", "nosuchnet"], "field 'model'"),
    (["--model", "/nonexistent/x.py:make"], "does not exist"),
    (["--model", "{user}:missing"], "has no function 'missing'"),
    (["--model", "{user}:not_a_module"], "must return a torch.nn.Module"),
    (["--model", "{user}:make", "--fused", "5:2"], "field 'fused'"),
    (["--model", "{user}:make", "--fused", "x"], "field 'fused'"),
    (["--model", "{user}:make", "--fused", "0:4"], "not row-local"),
    (["--model", "{user}:make", "--devices", "0"], "field 'devices'"),
    (["--model", "{user}:make", "--cluster", "/nonexistent.json"], "field 'cluster'"),
    (["--model", "alexnet", "--input-size", "8", "8"], "input"),
])
def test_validate_bad_input_exits_2(user_file, capsys, args, match):
    args = [a.replace("{user}", user_file) for a in args]
    assert main(["validate", *args]) == 2
    assert match in capsys.readouterr().err


@pytest.mark.slow
def test_run_command_local(user_file, capsys):
    code = main(["run", "--model", f"{user_file}:make", "--devices", "2", "--solver", "equal", "--repeats", "1",
                 "--timeout", "30", "--json", "--calibrate"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["passed"] and out["max_error"] <= 1e-5
    assert out["rows"][0] == [7, 7] and len(out["layer_times"]) == 4
    # both calibrated predictions: MODEL.md's single rate and the per-class compute costs
    assert len(out["predicted_calibrated"]) == len(out["predicted_per_class"]) == 4
    assert all(t > 0 for t in out["predicted_per_class"])


def test_run_bad_options_exit_2(user_file, capsys):
    assert main(["run", "--model", f"{user_file}:make", "--timeout", "0"]) == 2
    assert "field 'timeout'" in capsys.readouterr().err
    assert main(["run", "--model", f"{user_file}:make", "--rank", "5", "--master-port", "29999"]) == 2
    assert "field 'rank'" in capsys.readouterr().err
