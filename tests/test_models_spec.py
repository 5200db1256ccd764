"""Model specs in a catalogue (jaxsplit.models): zoo names at any size and torch models read by the bridge."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsplit import cli, models, zoo
from jaxsplit.catalogue import LAYER_FIELDS, RequestLatency, unique_layers
from jaxsplit.envs import EnvSpec, make
from jaxsplit.envs.spec import parse_models
from jaxsplit.latency import Cluster, allocation_rates, device_times, layer_arrays, layer_arrays_numpy
from jaxsplit.solvers import closed_form_split

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = Cluster.create(flops=[2e10, 5e10], bandwidth=[jnp.inf, 1.25e8], latency=[0.0, 0.002])

#: a small plain CNN: conv, relu, maxpool, conv, adaptive avg pool, flatten, linear
NET = """
import torch.nn as nn


def make():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def with_shape():
    return make(), (3, 20, 20)


def boom():
    raise RuntimeError("no weights here")


def not_a_module():
    return 42


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.lstm = nn.LSTM(16, 8, batch_first=True)

    def forward(self, x):
        y = self.pool(self.conv(x)).flatten(1).unsqueeze(1)
        return self.lstm(y)[0]


def lstm():
    return Recurrent()


class Rolled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        import torch
        return torch.roll(self.conv(x), 1, 2)


def custom_op():
    return Rolled()
"""


@pytest.fixture(scope="module")
def net_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("net") / "net.py"
    path.write_text(textwrap.dedent(NET))
    return str(path)


def _one_line(err: pytest.ExceptionInfo, spec: str) -> str:
    text = str(err.value)
    assert "\n" not in text and text.startswith("field 'models': ") and repr(spec) in text, text
    return text


# ----------------------------------------------------------------------------- grammar
@pytest.mark.parametrize("spec, size, want", [
    ("vgg16@160x192", (224, 224), (160, 192)),
    ("yolov2_tiny@224", (64, 64), (224, 224)),
    ("resnet18", (96, 80), (96, 80)),
])
def test_zoo_spec_is_the_zoo_table(spec, size, want):
    name = spec.partition("@")[0]
    assert models.resolve(spec, size) == zoo.get(name, want)


def test_parse_keeps_the_text_and_finds_the_size():
    assert models.parse("vgg16@160x192") == models.ModelSpec("vgg16@160x192", "zoo", "vgg16", (160, 192))
    assert models.parse("a@b/net.py:make") == models.ModelSpec("a@b/net.py:make", "file", "a@b/net.py:make", None)
    assert models.parse("a@b/net.py:make@32") == models.ModelSpec("a@b/net.py:make@32", "file", "a@b/net.py:make",
                                                                   (32, 32))
    assert models.parse("torchvision:resnet18@64x96").size == (64, 96)


def test_parse_models_lists_specs_as_written():
    text = "resnet50, yolov2_tiny@224,vgg16@160x192"
    assert parse_models(text) == ("resnet50", "yolov2_tiny@224", "vgg16@160x192")
    with pytest.raises(ValueError, match=r"^field 'mix': 'vgg16@0': "):
        parse_models("alexnet,vgg16@0", "mix")


# ----------------------------------------------------------------------------- zoo names unchanged
def _previous_unique_layers(name, input_size, q):
    """The catalogue's table before specs existed: straight from zoo.get."""
    cols = layer_arrays_numpy(zoo.get(name, input_size), q, np.float64)
    table = np.stack([cols[f] for f in LAYER_FIELDS], axis=1)
    uniq, first, inverse = np.unique(table, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    counts = np.bincount(inverse.reshape(-1), minlength=len(uniq)).astype(np.float64)
    return uniq[order], counts[order]


@pytest.mark.parametrize("name", list(zoo.ZOO_DEFAULT_SIZE))
def test_unique_layers_of_zoo_names_unchanged(name):
    got, want = unique_layers(name, (224, 224), 4.0), _previous_unique_layers(name, (224, 224), 4.0)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_request_latency_of_zoo_names_unchanged():
    names = ("vgg16", "resnet18", "mobilenet_v2", "alexnet")
    engine = RequestLatency(names, (224, 224), 4.0, num_devices=2)
    cat = engine.catalogue
    tables = [_previous_unique_layers(m, (224, 224), 4.0) for m in names]
    flat = np.concatenate([t[0] for t in tables])
    for i, f in enumerate(LAYER_FIELDS):
        np.testing.assert_array_equal(np.asarray(getattr(cat.flat_layers, f)), flat[:, i].astype(engine.dtype))
    np.testing.assert_array_equal(np.asarray(cat.flat_count), np.concatenate([t[1] for t in tables]))
    np.testing.assert_array_equal(np.asarray(cat.size), [len(t[0]) for t in tables])
    assert engine.models == names
    # the same model named with its size gives the same arrays
    sized = RequestLatency(tuple(f"{m}@224x224" for m in names), (64, 64), 4.0, num_devices=2).catalogue
    for a, b in zip(jax.tree.leaves(cat), jax.tree.leaves(sized)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mixed_sizes_in_one_catalogue():
    specs = ("resnet18", "alexnet@96", "vgg16@96x128")
    engine = RequestLatency(specs, (64, 64), 4.0, num_devices=2)
    sizes = [(64, 64), (96, 96), (96, 128)]
    want = [sum(l.work for l in zoo.get(m.partition("@")[0], s)) for m, s in zip(specs, sizes)]
    np.testing.assert_allclose(np.asarray(engine.catalogue.work), want, rtol=1e-6)
    assert engine.models == specs


# ----------------------------------------------------------------------------- the bridge
def _direct_exec_time(layers, cluster, share) -> float:
    """E from the layer table itself: every layer (no de-duplication) split by the closed form, float32."""
    arrays = layer_arrays(layers)
    rates = allocation_rates(cluster, share)

    def one(layer):
        return jnp.max(device_times(layer, rates, closed_form_split(layer, cluster, share)))

    return float(jnp.sum(jax.vmap(one)(arrays)))


@pytest.mark.slow
def test_bridge_spec_is_the_traced_table(net_file):
    torch = pytest.importorskip("torch")
    from jaxsplit.bridge import from_torch

    spec = f"{net_file}:make@40x48"
    layers = from_torch(_load(net_file).make(), (1, 3, 40, 48))
    assert models.resolve(spec, (224, 224)) == layers
    assert models.resolve(f"{net_file}:make", (40, 48)) == layers
    # a factory's own shape gives the channels; the size is the spec's, else the catalogue's
    assert models.resolve(f"{net_file}:with_shape", (40, 48)) == layers
    engine = RequestLatency((spec, "alexnet@64"), (224, 224), 4.0, num_devices=2)
    assert engine.models == (spec, "alexnet@64")
    np.testing.assert_allclose(float(engine.catalogue.work[0]), sum(l.work for l in layers), rtol=1e-6)
    for share in (jnp.ones(2), jnp.array([0.5, 0.25])):
        e = float(engine.exec_time(CLUSTER, share, jnp.int32(0)))
        np.testing.assert_allclose(e, _direct_exec_time(layers, CLUSTER, share), rtol=1e-5)
    del torch


def _load(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_test_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bridge_tables_are_cached_and_follow_the_file(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "net.py"
    path.write_text(textwrap.dedent(NET))
    spec = f"{path}:make@32"
    first = models.resolve(spec, (8, 8))
    hits = models._resolve_cached.cache_info().hits
    assert models.resolve(spec, (8, 8)) == first
    assert models._resolve_cached.cache_info().hits == hits + 1
    # an edited file is read again (the cache key holds its modification time and length)
    path.write_text(textwrap.dedent(NET).replace("nn.Linear(16, 10)", "nn.Linear(16, 12)"))
    assert models.resolve(spec, (8, 8))[-1].out_channels == 12


@pytest.mark.slow
def test_env_and_spec_round_trip(net_file):
    pytest.importorskip("torch")
    text = f"alexnet@64,{net_file}:make@32"
    spec = EnvSpec(env="alloc-n2-v0", models=text, requests=8)
    env, params = spec.base()
    assert env.models == ("alexnet@64", f"{net_file}:make@32")
    assert EnvSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    obs, state = env.reset(jax.random.key(0), params)
    _, _, reward, _, _, _ = env.step(jax.random.key(1), state, jnp.ones(2), params)
    assert np.isfinite(float(reward))


# ----------------------------------------------------------------------------- bad specs
@pytest.mark.parametrize("spec, needle", [
    ("vgg17", "unknown model 'vgg17'"),
    ("vgg16@0", "size after '@'"),
    ("vgg16@axb", "size after '@'"),
    ("vgg16@", "size after '@'"),
    ("vgg16@8", "too small"),
    ("missing/net.py:make", "does not exist"),
    ("net.py:", "PATH.py:FACTORY"),
])
def test_bad_zoo_or_form_is_one_line(spec, needle):
    with pytest.raises(ValueError) as err:
        models.resolve(spec, (224, 224))
    assert needle in _one_line(err, spec)
    with pytest.raises(ValueError) as err:
        RequestLatency(("alexnet", spec), (224, 224), 4.0, num_devices=2)
    assert needle in _one_line(err, spec)


@pytest.mark.parametrize("factory, needle", [
    ("nothing", "no function 'nothing'"),
    ("boom", "RuntimeError: no weights here"),
    ("not_a_module", "torch.nn.Module"),
    ("lstm", "LSTM"),
    ("custom_op", "roll"),
])
def test_bad_torch_model_is_one_line(net_file, factory, needle):
    pytest.importorskip("torch")
    spec = f"{net_file}:{factory}@32"
    with pytest.raises(ValueError) as err:
        RequestLatency((spec,), (224, 224), 4.0, num_devices=2)
    assert needle in _one_line(err, spec)


def test_torch_spec_without_torch_says_to_install_the_extra(net_file, monkeypatch):
    monkeypatch.setattr(models, "_torch_available", lambda: False)
    spec = f"{net_file}:make"
    with pytest.raises(ValueError) as err:
        models.check(spec)
    assert "jaxsplit[torch]" in _one_line(err, spec)
    assert models.check("vgg16@64").size == (64, 64)  # zoo specs need no torch


def test_catalogue_does_not_import_torch():
    code = "import sys, jaxsplit.catalogue, jaxsplit.models, jaxsplit.envs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- jaxsplit evaluate
EVAL = ["evaluate", "--policy", "whole_cluster", "--loads", "0.9", "--episodes", "1", "--requests", "8", "--json"]


@pytest.mark.slow
def test_evaluate_baselines_on_specs(net_file, capsys):
    pytest.importorskip("torch")
    code = cli.main([*EVAL, "--env", "alloc-n2-v0", "--models", f"yolov2_tiny@224,{net_file}:make"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 1 and rows[0]["policy"] == "whole_cluster" and rows[0]["mean_latency_s"] > 0


@pytest.mark.parametrize("bad", ["vgg17", "vgg16@0", "vgg16@axb", "missing.py:make", "NET:lstm@32"])
def test_evaluate_bad_spec_exits_2_with_one_line(net_file, capsys, bad):
    if bad.startswith("NET"):
        pytest.importorskip("torch")
        bad = bad.replace("NET", net_file)
    code = cli.main([*EVAL, "--models", f"alexnet,{bad}"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "field 'models'" in lines[0] and repr(bad) in lines[0], err
