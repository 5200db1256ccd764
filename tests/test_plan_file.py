"""``jaxsplit validate --plan-file``: a plan printed by ``jaxsplit split --plan ... --json`` is proven
segment by segment against PyTorch; a plan file with missing or overlapping layers, a channel split
of a grouped convolution or a split that does not add up is refused in one line, exit status 2."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

pytest.importorskip("torch")

from jaxsplit import cli  # noqa: E402

DEVICES = [{"flops": 2e10, "bandwidth": None, "latency": 0.0, "share": 1.0},
           {"flops": 5e10, "bandwidth": 1.25e8, "latency": 2e-3, "share": 1.0},
           {"flops": 8e10, "bandwidth": 2.5e8, "latency": 1e-3, "share": 1.0}]


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    """The fused plan of MobileNetV2 at 32x32 on three devices, as `split --plan fused --json` prints it."""
    folder = tmp_path_factory.mktemp("plans")
    inst = folder / "inst.json"
    inst.write_text(json.dumps({"model": "mobilenet_v2", "input_size": [32, 32], "devices": DEVICES}))
    code, out, err = _run(["split", str(inst), "--plan", "fused", "--json"])
    assert code == 0, err
    return folder, json.loads(out)


def _validate(path):
    return _run(["validate", "--model", "mobilenet_v2", "--input-size", "32", "32", "--devices", "3",
                 "--plan-file", str(path), "--json"])


@pytest.mark.slow
def test_a_printed_plan_is_proven(plan):
    folder, obj = plan
    path = folder / "plan.json"
    path.write_text(json.dumps(obj))
    code, out, err = _validate(path)
    assert code == 0, err
    result = json.loads(out)
    assert result["passed"] and len(result["segments"]) == len(obj["segments"])


def _broken(obj, how):
    obj = json.loads(json.dumps(obj))
    segs = obj["segments"]
    if how == "missing":
        obj["segments"] = segs[:-1]
    elif how == "overlap":
        segs[1]["layers"][0] -= 1
    elif how == "grouped":
        # MobileNetV2's second layer is a depthwise convolution (groups = channels)
        first = next(s for s in segs if s["layers"][0] <= 1 < s["layers"][1])
        i = segs.index(first)
        a, b = first["layers"]
        pieces = [{"layers": [j, j + 1], "partition": "rows", "split": [1, 0, 0], "latency": 0.0} for j in range(a, b)]
        pieces[1 - a] = {"layers": [1, 2], "partition": "channels", "split": [16, 16, 0], "latency": 0.0}
        obj["segments"] = segs[:i] + pieces + segs[i + 1:]
    elif how == "sum":
        single = next(s for s in segs if s["layers"][1] - s["layers"][0] == 1)
        single["split"][0] += 1
    return obj


@pytest.mark.slow
@pytest.mark.parametrize("how, message", [
    ("missing", "field 'segments': they cover layers 0.."),
    ("overlap", "field 'segments[1].layers'"),
    ("grouped", "field 'segments["),
    ("sum", "must sum to"),
])
def test_a_broken_plan_file_is_refused_in_one_line(plan, how, message):
    folder, obj = plan
    path = folder / f"{how}.json"
    path.write_text(json.dumps(_broken(obj, how)))
    code, out, err = _validate(path)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("text, message", [("", "is not JSON"), ("{\"segments\": []}", "non-empty 'segments'"),
                                           ("{\"segments\": [{\"layers\": [0]}]}", "field 'segments[0]'")])
def test_a_malformed_plan_file_is_named(tmp_path, text, message):
    path = tmp_path / "plan.json"
    path.write_text(text)
    code, _, err = _validate(path)
    assert code == 2 and err.count("\n") == 1 and message in err, err
