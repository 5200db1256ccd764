"""Instance parsing and the split / zoo commands, bad input included."""

import json

import numpy as np
import pytest

from jaxsplit import cli
from jaxsplit.instance import example_instance, loads, parse_instance
from jaxsplit.plan import solve_instances

GOOD = example_instance("resnet18")


def bad(**changes):
    obj = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        target = obj
        keys = path.split("__")
        for k in keys[:-1]:
            target = target[int(k)] if k.isdigit() else target[k]
        if value is KeyError:
            del target[keys[-1]]
        else:
            target[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    return obj


CASES = [
    (bad(devices__1__flops=-1.0), "devices[1].flops"),
    (bad(devices__1__flops=0), "devices[1].flops"),
    (bad(devices__2__share=1.5), "devices[2].share"),
    (bad(devices__0__latency=-0.1), "devices[0].latency"),
    (bad(devices__1__bandwidth=0), "devices[1].bandwidth"),
    (bad(devices__1__bandwidth="fast"), "devices[1].bandwidth"),
    (bad(devices=[{"flops": 1e9, "share": 0.0}]), "no device has a positive share"),
    (bad(devices=[]), "devices"),
    (bad(model="vgg17"), "model"),
    (bad(model="vgg16", input_size=[4, 4]), "input_size"),
    (bad(input_size=[0, 4]), "input_size"),
    (bad(input_size="big"), "input_size"),
    (bad(bytes_per_element=0), "bytes_per_element"),
    ({"devices": GOOD["devices"]}, "layers"),
    ({"layers": [{"type": "conv", "in_channels": 3, "out_channels": 4, "kernel": [5, 5], "in_height": 2,
                  "in_width": 8}], "devices": GOOD["devices"]}, "kernel"),
    ({"layers": [{"type": "dropout"}], "devices": GOOD["devices"]}, "type"),
    ({"layers": [{"type": "conv", "in_channels": 3, "out_channels": 4, "kernel": [3, 3], "in_height": -2,
                  "in_width": 8}], "devices": GOOD["devices"]}, "in_height"),
]


@pytest.mark.parametrize("obj, field", CASES)
def test_bad_instances_name_the_field(obj, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_instance(obj)


def test_jsonl_errors_name_the_line():
    text = json.dumps(GOOD) + "\n" + json.dumps(bad(devices__1__flops=-1)) + "\n"
    with pytest.raises(ValueError, match=r"line 2: .*devices\[1\].flops"):
        loads(text)
    with pytest.raises(ValueError, match="line 2: malformed JSON"):
        loads(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(ValueError, match="empty"):
        loads("   ")


def test_batch_plans_equal_single_plans():
    objs = [example_instance(m) for m in ("vgg16", "mobilenet_v2", "alexnet")]
    objs[1]["devices"] = objs[1]["devices"][:2]  # different device counts in one batch
    insts = [parse_instance(o) for o in objs]
    together = solve_instances(insts, "closed_form")
    for inst, plan in zip(insts, together):
        alone = solve_instances([inst], "closed_form")[0]
        assert np.array_equal(alone.rows, plan.rows)
        assert plan.rows.shape == (len(inst.layers), inst.num_devices)
        assert (plan.rows.sum(1) == [l.out_height for l in inst.layers]).all()
        assert plan.latency == pytest.approx(alone.latency, rel=1e-6)


def test_cli_split_json_lines(tmp_path, capsys):
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(json.dumps(example_instance(m)) for m in ("resnet18", "alexnet")) + "\n")
    assert cli.main(["split", str(path), "--json", "--solver", "exact"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert set(first) == {"latency", "layers"}
    assert first["latency"] == pytest.approx(sum(l["latency"] for l in first["layers"]), rel=1e-9)
    assert all(len(l["rows"]) == 4 for l in first["layers"])


def test_cli_split_table(tmp_path, capsys):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(GOOD))
    assert cli.main(["split", str(path)]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "request" in out


@pytest.mark.parametrize("obj, field", CASES[:6])
def test_cli_reports_bad_input_with_exit_2(tmp_path, capsys, obj, field):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(obj))
    assert cli.main(["split", str(path)]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err


def test_cli_malformed_and_missing_file(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text('{"model": "vgg16", "devices": [')
    assert cli.main(["split", str(path)]) == 2
    assert "malformed JSON" in capsys.readouterr().err
    assert cli.main(["split", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert cli.main(["nonsense"]) == 2


def test_cli_stdin(monkeypatch, capsys):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(GOOD)))
    assert cli.main(["split", "-", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency"] > 0


def test_cli_zoo(capsys):
    assert cli.main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("vgg16", "resnet50", "yolov2_tiny"))
    assert cli.main(["zoo", "resnet18", "--input-size", "64", "48", "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert layers[0]["in_height"] == 64 and layers[0]["in_width"] == 48
    assert cli.main(["zoo", "vgg17"]) == 2
