"""``jaxsplit split`` seen from the outside: the solver flag picks the rule, the instance's bytes per
element reach the latencies, and a JSON Lines batch larger than a solver block gives, for every
solver, what the same instances give in separate calls below a block; solve_batch cuts a batch that
is not a whole number of blocks back to its own rows."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from jaxsplit import cli, reference, solvers
from jaxsplit.instance import example_instance, parse_instance
from jaxsplit.layers import layer_from_dict
from jaxsplit.plan import solve_instances

SOLVERS = sorted(solvers.SOLVERS)


def split_json(capsys, path, *flags: str) -> list[dict]:
    """The records ``jaxsplit split PATH --json FLAGS`` prints, one per instance."""
    capsys.readouterr()
    assert cli.main(["split", str(path), "--json", *flags]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def devices_of(obj: dict) -> tuple[list[tuple[float, float, float]], list[float]]:
    """(flops, bandwidth, latency) per device and the shares, as the numpy reference takes them."""
    devs = [(d["flops"], np.inf if d.get("bandwidth") is None else d["bandwidth"], d.get("latency", 0.0))
            for d in obj["devices"]]
    return devs, [d.get("share", 1.0) for d in obj["devices"]]


@pytest.fixture(scope="module")
def per_solver(tmp_path_factory):
    """The example ResNet-18 instance on its four unequal devices, split by the CLI with every solver
    (capsys is per test: the module-scoped runs read standard output themselves)."""
    obj = example_instance("resnet18")
    path = tmp_path_factory.mktemp("split") / "one.json"
    path.write_text(json.dumps(obj))
    out = {}
    for name in SOLVERS:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert cli.main(["split", str(path), "--json", "--solver", name]) == 0
        out[name] = json.loads(buf.getvalue())
    return obj, out


def test_solver_flag_gives_each_rule_its_own_split(per_solver):
    obj, out = per_solver
    inst = parse_instance(obj)
    layers = inst.layers
    active = np.asarray([d["share"] > 0 for d in obj["devices"]])
    for name in SOLVERS:
        rows = np.asarray([layer["rows"] for layer in out[name]["layers"]])
        assert np.array_equal(rows, solve_instances([inst], name)[0].rows), name
        assert (rows.sum(1) == [l.out_height for l in layers]).all()
    rows = {name: np.asarray([layer["rows"] for layer in out[name]["layers"]]) for name in SOLVERS}
    # each rule's own definition, visible in the output
    eq = rows["equal"][:, active]
    assert (eq.max(1) - eq.min(1) <= 1).all()
    assert ((rows["single"] > 0).sum(1) == 1).all()
    lat = {name: np.asarray([layer["latency"] for layer in out[name]["layers"]]) for name in SOLVERS}
    for name in SOLVERS:
        assert (lat["exact"] <= lat[name] * (1 + 1e-6)).all(), name
    # and they differ: the instance tells the rules apart
    assert len({rows[name].tobytes() for name in SOLVERS}) >= 5
    assert lat["exact"].sum() < lat["equal"].sum() and lat["exact"].sum() < lat["single"].sum()


def test_solver_flag_is_named_in_the_table(tmp_path, capsys):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(example_instance("resnet18")))
    for name in ("equal", "exact"):
        assert cli.main(["split", str(path), "--solver", name]) == 0
        assert f"solver {name}" in capsys.readouterr().out


@pytest.mark.parametrize("q", [1, 2.5, 8])
def test_bytes_per_element_reaches_every_layer_latency(tmp_path, capsys, q):
    """Each printed layer latency is the numpy reference's for the printed rows and the instance's q."""
    obj = dict(example_instance("alexnet"), bytes_per_element=q)
    path = tmp_path / "q.json"
    path.write_text(json.dumps(obj))
    record = split_json(capsys, path, "--solver", "equal")[0]
    layers = parse_instance(obj).layers
    devs, shares = devices_of(obj)
    for layer, got in zip(layers, record["layers"]):
        want = reference.layer_latency(layer, devs, shares, got["rows"], q)
        assert got["latency"] == pytest.approx(want, rel=2e-5), (layer.name, q)
        if layer.out_height > 1:  # a split layer moves data over the links: q changes its latency
            assert want != pytest.approx(reference.layer_latency(layer, devs, shares, got["rows"], 4.0), rel=1e-3)


def _random_layer(rng: np.random.Generator) -> dict:
    """A valid random conv or pool layer object with a few output rows."""
    while True:
        h, k, s = int(rng.integers(2, 30)), int(rng.integers(1, 5)), int(rng.integers(1, 4))
        if rng.random() < 0.7:
            obj = {"type": "conv", "in_channels": int(rng.integers(1, 16)), "out_channels": int(rng.integers(1, 16)),
                   "kernel": [k, k], "stride": [s, s], "padding": [int(rng.integers(0, 3))] * 2,
                   "in_height": h, "in_width": int(rng.integers(2, 30))}
        else:
            obj = {"type": "maxpool", "channels": int(rng.integers(1, 16)), "kernel": [k, k], "stride": [s, s],
                   "padding": [int(rng.integers(0, k // 2 + 1))] * 2, "ceil_mode": bool(rng.random() < 0.5),
                   "in_height": h, "in_width": int(rng.integers(2, 30))}
        try:
            layer_from_dict(obj)
        except ValueError:
            continue
        return obj


def random_instances(rng: np.random.Generator, count: int, layers: int) -> list[dict]:
    """Instances of ``layers`` random layers on 1 to 5 random devices, some with share 0, and a random q."""
    out = []
    for _ in range(count):
        n = int(rng.integers(1, 6))
        share = np.where(rng.random(n) < 0.25, 0.0, rng.uniform(0.05, 1.0, n))
        share[rng.integers(n)] = rng.uniform(0.1, 1.0)
        devices = [{"flops": float(rng.uniform(1e9, 1e11)),
                    "bandwidth": None if i == 0 else float(rng.uniform(1e7, 1e9)),
                    "latency": 0.0 if i == 0 else float(rng.uniform(0, 4e-3)), "share": float(share[i])}
                   for i in range(n)]
        out.append({"layers": [_random_layer(rng) for _ in range(layers)], "devices": devices,
                    "bytes_per_element": float(rng.choice([1, 2, 4, 8]))})
    return out


#: 560 instances of 8 layers: 4,480 (instance, layer) pairs, above the vmapped solvers' block of 4,096
#: and the device-major closed form's (16,384 / 5 devices); the LP, a host loop, gets fewer
COUNT, LAYERS, LP_COUNT = 560, 8, 24
#: instances per separate call: 320 pairs, below every block
PIECE = 40


@pytest.fixture(scope="module")
def big_batch(tmp_path_factory):
    objs = random_instances(np.random.default_rng(19), COUNT, LAYERS)
    path = tmp_path_factory.mktemp("batch") / "big.jsonl"
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    lp_path = path.with_name("lp.jsonl")
    lp_path.write_text("".join(json.dumps(o) + "\n" for o in objs[:LP_COUNT]))
    return objs, path, lp_path


def test_the_batch_is_larger_than_every_block():
    assert COUNT * LAYERS > solvers.BLOCK and COUNT * LAYERS > solvers.DEVICE_MAJOR_BLOCK // 5
    assert PIECE * LAYERS < solvers.BLOCK and PIECE * LAYERS < solvers.DEVICE_MAJOR_BLOCK // 5


@pytest.mark.slow
@pytest.mark.parametrize("name", SOLVERS)
def test_large_json_lines_batch_equals_the_instances_solved_apart(big_batch, capsys, name):
    """The CLI's batch against the same instances in separate calls, each below every block."""
    objs, path, lp_path = big_batch
    if name in solvers.HOST_SOLVERS:
        objs, path = objs[:LP_COUNT], lp_path
    records = split_json(capsys, path, "--solver", name)
    assert len(records) == len(objs)
    insts = [parse_instance(o) for o in objs]
    apart = [plan for at in range(0, len(insts), PIECE) for plan in solve_instances(insts[at:at + PIECE], name)]
    for k, (plan, record) in enumerate(zip(apart, records)):
        rows = np.asarray([layer["rows"] for layer in record["layers"]])
        assert np.array_equal(rows, plan.rows), (name, k)
        assert record["latency"] == pytest.approx(plan.latency, rel=1e-6), (name, k)


@pytest.mark.slow
def test_device_major_array_code_on_a_large_batch_equals_small_pieces():
    """The closed form's array path (the one off the CPU) in blocks equals it on pieces below a block."""
    import jax
    import jax.numpy as jnp

    from jaxsplit import sampling

    n = 8
    batch = 2 * (solvers.DEVICE_MAJOR_BLOCK // n) + 123  # three blocks, the last one partial
    la, cl, share, _ = sampling.random_batch(np.random.default_rng(3), batch, n)
    whole = np.asarray(jax.jit(solvers.solve_device_major_arrays)(la, cl, jnp.asarray(share)))
    piece = 1000
    pieces = jax.jit(solvers.solve_device_major_arrays)
    parts = []
    for at in range(0, batch, piece):
        cut = slice(at, min(at + piece, batch))
        sub = jax.tree.map(lambda x: jnp.asarray(x[cut]), (la, cl))
        take = jnp.asarray(share[cut])
        if take.shape[0] < piece:  # one shape for every piece: pad with the first instance
            fill = piece - take.shape[0]
            sub = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[:1], fill, 0)]), sub)
            take = jnp.concatenate([take, jnp.repeat(take[:1], fill, 0)])
        parts.append(np.asarray(pieces(*sub, take))[: cut.stop - cut.start])
    assert np.array_equal(whole, np.concatenate(parts))


@pytest.mark.parametrize("name", ["proportional", "rebalance"])
def test_vmapped_solver_on_a_batch_that_is_not_a_whole_number_of_blocks(name):
    """``solve_batch`` pads a batch to whole blocks and cuts it back: a batch of one block and a bit
    equals the same instances in pieces below a block (what the CLI's power-of-two batches never show)."""
    import jax
    import jax.numpy as jnp

    from jaxsplit import sampling

    batch, piece = solvers.BLOCK + 300, 1100
    la, cl, share, _ = sampling.random_batch(np.random.default_rng(11), batch, 5)
    whole = np.asarray(solvers.solve_batch(name, la, cl, jnp.asarray(share)))
    one = jax.jit(jax.vmap(solvers.SOLVERS[name]))
    parts = []
    for at in range(0, batch, piece):
        idx = np.minimum(np.arange(at, at + piece), batch - 1)  # one shape: the last piece repeats its last row
        sub = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[idx]), (la, cl))
        parts.append(np.asarray(one(*sub, jnp.asarray(share[idx])))[: min(piece, batch - at)])
    assert np.array_equal(whole, np.concatenate(parts))


def test_a_batch_is_padded_to_the_next_power_of_two_rows():
    """Batches of (instance, layer) rows are padded to a power of two, so that a stream of batches of
    nearby sizes reuses a few compiled programs; the padding is dropped from the result."""
    from jaxsplit import plan

    assert [plan._bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 1000)] == [1, 2, 4, 4, 8, 8, 16, 1024]
    inst = parse_instance(example_instance("resnet18"))
    layers, cluster, share, real = plan.flatten([inst, inst, inst])
    assert real == 3 * len(inst.layers) and share.shape[0] == plan._bucket(real) > real
    assert cluster.flops.shape == share.shape and layers.out_height.shape == share.shape[:1]


def test_solve_instances_defaults_to_the_closed_form_and_names_a_bad_instance_of_a_batch():
    """The library call: the closed form unless told otherwise; an instance built in Python outside
    the numeric contract is refused naming its field, with its place when it is one of several."""
    import dataclasses

    from jaxsplit.instance import Device

    inst = parse_instance(example_instance("resnet18"))
    assert np.array_equal(solve_instances([inst])[0].rows, solve_instances([inst], "closed_form")[0].rows)
    bad = dataclasses.replace(inst, devices=(Device(flops=-1.0),) + inst.devices[1:])
    with pytest.raises(ValueError) as err:
        solve_instances([bad])
    assert str(err.value).startswith("field 'devices[0].flops'")
    with pytest.raises(ValueError) as err:
        solve_instances([inst, bad])
    assert str(err.value).startswith("instance 1: field 'devices[0].flops'")
    # a layer without a name is called by its kind and place
    named = dataclasses.replace(inst, layers=(dataclasses.replace(inst.layers[0], name="stem"),)
                                + tuple(dataclasses.replace(layer, name="") for layer in inst.layers[1:3]))
    assert solve_instances([named])[0].names == ("stem", f"{inst.layers[1].kind}1", f"{inst.layers[2].kind}2")
