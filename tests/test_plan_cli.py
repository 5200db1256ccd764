"""``jaxsplit split --plan`` seen from the outside (MODEL.md section 7): strict JSON whose segments cover
every layer once and in order, each with its partition, split and latency; ``--plan layer`` is the
per-layer output unchanged; the peers' plans run; the exact rule is never slower than the closed
form; combinations of plan and solver that make no sense and bad graphs are refused in one line with
exit status 2; a JSON Lines batch of several models gives one result per line in order.

The instances are small (a few layers each), so that every compiled planner takes seconds; the
module fixture runs each command once and the tests read its output."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import pytest

from jaxsplit import cli
from jaxsplit.instance import parse_instance

DEVICES = [{"flops": 2e10, "bandwidth": None, "latency": 0.0, "share": 1.0},
           {"flops": 5e10, "bandwidth": 1.25e8, "latency": 2e-3, "share": 0.5},
           {"flops": 8e10, "bandwidth": 2.5e8, "latency": 1e-3, "share": 0.75},
           {"flops": 1e10, "bandwidth": 6.25e7, "latency": 4e-3, "share": 0.0}]


def _conv(name, c_in, c_out, h, w, k=3, s=1, p=1, **extra):
    return {"type": "conv", "in_channels": c_in, "out_channels": c_out, "kernel": [k, k], "stride": [s, s],
            "padding": [p, p], "in_height": h, "in_width": w, "name": name, **extra}


def _pool(name, c, h, w, **extra):
    return {"type": "maxpool", "channels": c, "kernel": [2, 2], "stride": [2, 2], "padding": [0, 0],
            "in_height": h, "in_width": w, "name": name, **extra}


#: A residual network: a stem, one block whose last convolution reads its first and its shortcut
#: (a sum held at the cut after it), a pool, a classifier.
RESIDUAL = {"layers": [_conv("stem", 3, 16, 32, 32),
                       _conv("b1", 16, 16, 32, 32),
                       _conv("b2", 16, 16, 32, 32, inputs=["b1", "stem"]),
                       _conv("b3", 16, 32, 32, 32, s=2),
                       _pool("pool", 32, 16, 16),
                       {"type": "linear", "in_features": 32 * 8 * 8, "out_features": 10, "name": "fc"}],
            "devices": DEVICES, "bytes_per_element": 4}

#: A chain: convolutions and pools only, no classifier.
CHAIN = {"layers": [_conv("c1", 3, 8, 40, 24), _conv("c2", 8, 8, 40, 24), _pool("p1", 8, 40, 24),
                    _conv("c3", 8, 16, 20, 12), _conv("c4", 16, 16, 20, 12, k=1, p=0)],
         "devices": DEVICES[:3], "bytes_per_element": 2}


def _strict(text: str):
    """JSON without NaN or Infinity."""
    def refuse(constant):
        raise AssertionError(f"non-strict JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def _records(argv: list[str]) -> list[dict]:
    code, out, err = _run(argv)
    assert code == 0, err
    return [_strict(line) for line in out.splitlines()]


def _write(folder, name: str, objs) -> str:
    path = folder / name
    if isinstance(objs, dict):
        path.write_text(json.dumps(objs))
    else:
        path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return str(path)


def _clusters(obj: dict, count: int) -> list[dict]:
    """``count`` copies of ``obj`` on different clusters (capacities, links and shares varied; the
    first is ``obj`` itself)."""
    out = [copy.deepcopy(obj)]
    for k in range(1, count):
        one = copy.deepcopy(obj)
        for i, dev in enumerate(one["devices"]):
            dev["flops"] *= 1.0 + 0.37 * ((k + i) % 4)
            if dev["bandwidth"] is not None:
                dev["bandwidth"] *= 0.25 + 0.5 * ((k * 3 + i) % 5)
            if i and dev["share"] > 0:
                dev["share"] = round(0.2 + 0.8 * ((k + 2 * i) % 3) / 2, 3)
        out.append(one)
    return out


#: Four clusters of the residual network: one vmapped call (and one compiled program) per plan.
CLUSTERS = _clusters(RESIDUAL, 4)
#: Two models in one JSON Lines batch, interleaved: the residual network's four clusters (the same
#: batch of four as CLUSTERS, so the same program) and two of the chain.
MIXED = [CLUSTERS[0], CHAIN, CLUSTERS[1], CLUSTERS[2], _clusters(CHAIN, 2)[1], CLUSTERS[3]]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plans")
    return {"residual": _write(folder, "residual.json", RESIDUAL), "clusters": _write(folder, "clusters.jsonl", CLUSTERS),
            "mixed": _write(folder, "mixed.jsonl", MIXED)}


@pytest.fixture(scope="module")
def runs(paths):
    """The plans of the four clusters and of the mixed batch, each command run once."""
    out = {plan: _records(["split", paths["clusters"], "--json", "--plan", plan])
           for plan in ("fused", "deepthings", "aofl")}
    out["mixed"] = _records(["split", paths["mixed"], "--json", "--plan", "fused"])
    return out


def check_segments(record: dict, obj: dict) -> None:
    """Section 7's output: ``latency`` and ``segments`` covering every layer once, in order, each
    ``{"layers": [first, end], "partition", "split", "latency"}`` with a split that adds up."""
    assert set(record) == {"latency", "segments"}
    layers = parse_instance(obj).layers
    shares = [d.get("share", 1.0) for d in obj["devices"]]
    at = 0
    for seg in record["segments"]:
        assert set(seg) == {"layers", "partition", "split", "latency"}
        first, end = seg["layers"]
        assert first == at and end > first, record["segments"]
        at = end
        assert seg["partition"] in ("rows", "channels")
        split = seg["split"]
        assert len(split) == len(shares) and all(isinstance(v, int) and v >= 0 for v in split)
        assert all(v == 0 for v, a in zip(split, shares) if a == 0), "a device with share 0 got work"
        last = layers[end - 1]
        if seg["partition"] == "channels":
            assert end - first == 1 and (last.kind == "linear" or (last.kind == "conv" and last.groups == 1))
            assert sum(split) == last.out_channels
        else:
            assert sum(split) == last.out_height
        if end - first > 1:
            assert all(layers[j].kind != "linear" for j in range(first, end))
        assert math.isfinite(seg["latency"]) and seg["latency"] > 0
    assert at == len(layers)
    assert record["latency"] == pytest.approx(sum(seg["latency"] for seg in record["segments"]), rel=1e-6)


def test_fused_plan_json_covers_every_layer_once_in_order(runs):
    assert len(runs["fused"]) == len(CLUSTERS)
    for record, obj in zip(runs["fused"], CLUSTERS):
        check_segments(record, obj)
    # the instances tell a plan from the per-layer plan: some segment fuses layers
    segments = [seg for record in runs["fused"] for seg in record["segments"]]
    assert any(seg["layers"][1] - seg["layers"][0] > 1 for seg in segments)


def test_fused_plan_is_never_slower_than_the_per_layer_output(paths, runs):
    per_layer = _records(["split", paths["clusters"], "--json"])
    for k, (fused, layer) in enumerate(zip(runs["fused"], per_layer)):
        assert fused["latency"] <= layer["latency"] * (1 + 1e-6), k


def test_plan_layer_is_the_output_without_plan(paths):
    for extra in (["--json"], [], ["--json", "--solver", "exact"]):
        plain = _run(["split", paths["residual"], *extra])
        layer = _run(["split", paths["residual"], *extra, "--plan", "layer"])
        assert plain[0] == layer[0] == 0
        assert plain[1] == layer[1] and plain[1]
    record = _strict(_run(["split", paths["residual"], "--json"])[1])
    assert set(record) == {"latency", "layers"} and len(record["layers"]) == len(RESIDUAL["layers"])


def test_peers_plans_run_with_their_own_rules(runs):
    for plan in ("deepthings", "aofl"):
        assert len(runs[plan]) == len(CLUSTERS)
        for k, (record, obj) in enumerate(zip(runs[plan], CLUSTERS)):
            check_segments(record, obj)
            assert all(seg["partition"] == "rows" for seg in record["segments"]), plan
            assert runs["fused"][k]["latency"] <= record["latency"] * 1.005, (plan, k)
        # DeepThings fuses at most one prefix; every other segment is one layer
        if plan == "deepthings":
            for record in runs[plan]:
                fused = [seg for seg in record["segments"] if seg["layers"][1] - seg["layers"][0] > 1]
                assert len(fused) <= 1 and all(seg["layers"][0] == 0 for seg in fused)


@pytest.mark.slow
def test_exact_rule_is_never_slower_than_the_closed_form(paths, runs):
    """The exact rule in every segment (a longer compile: bisections inside bisections)."""
    exact = _records(["split", paths["clusters"], "--json", "--plan", "fused", "--solver", "exact"])
    assert len(exact) == len(CLUSTERS)
    for k, (closed, e) in enumerate(zip(runs["fused"], exact)):
        check_segments(e, CLUSTERS[k])
        assert e["latency"] <= closed["latency"] * (1 + 1e-6), k


def test_plan_table_names_the_plan_and_its_segments(paths, runs):
    code, text, _ = _run(["split", paths["clusters"], "--plan", "fused"])
    assert code == 0 and "plan fused, solver closed_form" in text and "request" in text and "stem" in text
    assert text.count("instance ") == len(CLUSTERS)


def test_json_lines_batch_of_two_models_gives_one_result_per_line_in_order(runs):
    mixed = runs["mixed"]
    assert len(mixed) == len(MIXED)
    for record, obj in zip(mixed, MIXED):
        check_segments(record, obj)
        assert len(record["segments"][0]["split"]) == len(obj["devices"])
    # each line is what its instance gives in a batch of its own model alone
    residual = [mixed[k] for k, obj in enumerate(MIXED) if obj["layers"] == RESIDUAL["layers"]]
    assert residual == runs["fused"]
    chain = [record for record, obj in zip(mixed, MIXED) if obj["layers"] == CHAIN["layers"]]
    assert len(chain) == 2 and chain[0] != chain[1]


def _one_line_error(argv: list[str]) -> str:
    code, out, err = _run(argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("plan, solver", [("fused", "lp"), ("aofl", "exact"), ("deepthings", "equal")])
def test_a_solver_the_plan_cannot_use_is_refused_in_one_line(paths, plan, solver):
    line = _one_line_error(["split", paths["residual"], "--plan", plan, "--solver", solver])
    assert line.startswith("jaxsplit split: error:") and "'solver'" in line and repr(solver) in line, line
    assert plan in line or "fused segment" in line, line


def _with(layer: int, **changes) -> dict:
    obj = copy.deepcopy(RESIDUAL)
    obj["layers"][layer].update(changes)
    return obj


BAD_GRAPHS = [
    (_with(2, inputs=["b1", "nowhere"]), ["'inputs'", "'nowhere'", "no layer"]),
    (_with(1, inputs=["b2"]), ["'inputs'", "'b2'", "later layer"]),
    (_with(1, inputs=["b1"]), ["'inputs'", "'b1'"]),  # a cycle: the layer reads itself
    (_with(4, inputs=["b2", "b3"]), ["'inputs'", "'b2'", "32x32", "16x16"]),  # heights of its inputs differ
]


@pytest.mark.parametrize("obj, names", BAD_GRAPHS, ids=["unknown", "later", "self", "heights"])
@pytest.mark.parametrize("plan", ["layer", "fused"])
def test_bad_graph_is_one_line_naming_field_and_value(tmp_path, obj, names, plan):
    path = _write(tmp_path, "bad.json", obj)
    line = _one_line_error(["split", path, "--plan", plan])
    assert all(name in line for name in names), line


def test_bad_graph_in_a_batch_names_its_line(tmp_path):
    path = _write(tmp_path, "bad.jsonl", [RESIDUAL, BAD_GRAPHS[0][0]])
    line = _one_line_error(["split", path, "--plan", "fused", "--json"])
    assert "line 2" in line and "'nowhere'" in line
