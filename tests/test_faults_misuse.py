"""Mistakes a user makes, each one line on standard error with exit status 2 and nothing else: a
corrupt or mismatched checkpoint, an unknown command, a space file without its table, damaged
compilation-cache entries; and the Python API's misuse named by argument and expected type or shape."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings, strategies as st

from jaxsplit import cli, envs, latency, solvers, zoo
from jaxsplit.agents import checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--total-timesteps", "256", "--num-envs", "16", "--num-steps", "16", "--num-minibatches", "2",
        "--update-epochs", "1", "--hidden", "8", "--requests", "16", "--no-progress", "--skip-eval"]


def _console(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The console script as a user runs it (its own process, its own exit path)."""
    return subprocess.run([sys.executable, "-c", "import sys; from jaxsplit.cli import main; sys.exit(main())", *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})


def _only_line(done: subprocess.CompletedProcess, *needles: str) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    for noise in ("Traceback", "<bound method", "Event loop", "absl", " at 0x"):
        assert noise not in done.stderr, done.stderr[-3000:]
    return lines[0]


# ----------------------------------------------------------------------------- corrupt checkpoints

@pytest.fixture(scope="module")
def trained(tmp_path_factory, compilation_cache) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main(["train", *TINY, "--out", str(run)]) == 0
    return run


def _damage(run: Path, kind: str) -> None:
    step = run / "checkpoints" / str(checkpoint.latest_step(run))
    if kind == "manifest":
        (step / "default" / "manifest.ocdbt").write_bytes(b"garbage")
    elif kind == "metadata":
        (step / "default" / "_METADATA").write_text("{not json")
    elif kind == "emptied":
        for child in step.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    elif kind == "checkpoint metadata":
        (step / "_CHECKPOINT_METADATA").write_text("garbage")
        (step / "default" / "_METADATA").write_bytes(b"\x00" * 16)
    elif kind == "config hidden":  # config.json no longer matches its checkpoint
        config = json.loads((run / "config.json").read_text())
        config["ppo"]["hidden"] = [16]
        (run / "config.json").write_text(json.dumps(config))
    elif kind == "config layers":
        config = json.loads((run / "config.json").read_text())
        config["ppo"]["hidden"] = [8, 8]
        (run / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("kind", ["manifest", "metadata", "emptied", "checkpoint metadata", "config hidden",
                                  "config layers"])
def test_a_corrupt_or_mismatched_checkpoint_is_one_line(tmp_path, trained, kind):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    _damage(run, kind)
    done = _console("evaluate", "--checkpoint", str(run), "--policy", "ppo", "--loads", "0.5", "--episodes", "1",
                    "--requests", "8")
    line = _only_line(done, "checkpoint", str(run))
    if kind.startswith("config"):
        assert "does not match the run's config.json" in line, line


def test_an_error_reason_drops_object_reprs():
    err = ValueError("bad value <bound method pybind11_detail_function_record_v1.__call__ of "
                     "<pybind11_object at 0x7f00>> in tensorstore\nsecond line")
    text = checkpoint.reason(err)
    assert "<" not in text and "0x" not in text and "second" not in text and text.startswith("bad value")


# ----------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("word, near", [("nope", None), ("trian", "train"), ("evalute", "evaluate"), ("-x", None)])
def test_an_unknown_command_is_one_line(capsys, word, near):
    assert cli.main([word]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"unknown command {word!r}" in err, err
    assert (near is None) == ("did you mean" not in err) and (near is None or repr(near) in err), err


@pytest.mark.parametrize("text, needle", [('[params]\nlr = "1e-4:1e-2:log"\n', "no [space] table (found [params])"),
                                          ('[spaces]\nlr = "1e-4:1e-2"\n[other]\nx = 1\n', "found [spaces], [other]"),
                                          ("[space]\n", "needs a [space] table")])
def test_a_space_file_without_its_table_names_it(tmp_path, capsys, text, needle):
    path = tmp_path / "space.toml"
    path.write_text(text)
    assert cli.main(["sweep", "--out", str(tmp_path / "s"), "--space-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err and "--space-file" in err, err


@pytest.mark.slow
def test_zero_byte_or_damaged_cache_entries_are_compiled_again_without_a_word(tmp_path):
    cache = tmp_path / "cache"
    argv = ["evaluate", "--cache-dir", str(cache), "--policy", "whole_cluster", "--loads", "0.5", "--episodes", "1",
            "--requests", "8", "--json"]
    assert _console(*argv).returncode == 0
    entries = sorted(cache.glob("*-cache"))
    assert entries
    entries[0].write_bytes(b"")
    for entry in entries[1:]:
        entry.write_bytes(b"\x00garbage")
    done = _console(*argv)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    assert json.loads(done.stdout)[0]["policy"] == "whole_cluster"


# ----------------------------------------------------------------------------- the Python API

@pytest.mark.parametrize("size", [224, "224", (224,), (224, 224, 3), None])
def test_zoo_get_names_a_malformed_input_size(size):
    if size is None:
        assert zoo.get("vgg16", size)  # the default size
        return
    with pytest.raises(ValueError, match=r"field 'input_size': expected \(H, W\)"):
        zoo.get("vgg16", size)


@pytest.fixture(scope="module")
def env4():
    wrapper, params = envs.EnvSpec().make()  # the main job's: one share per device on 4 devices
    _, state = wrapper.reset(jax.random.key(0), params)
    return wrapper, wrapper.unwrapped, params, state


@settings(max_examples=12)
@given(width=st.integers(0, 12).filter(lambda n: n != 4), wrapped=st.booleans())
def test_an_action_of_the_wrong_width_is_named(env4, width, wrapped):
    wrapper, base, params, state = env4
    target = wrapper if wrapped else base
    with pytest.raises(ValueError, match=r"field 'action': expected .*4.* got shape \(" + str(width)):
        target.step(jax.random.key(1), state, jnp.ones(width), params)


@pytest.mark.parametrize("what", ["share list", "share tuple", "share float", "layer list", "cluster dict"])
def test_solve_batch_names_an_argument_of_the_wrong_type(what):
    layers = latency.layer_arrays(zoo.get("alexnet", (64, 64)))
    layer = jax.tree.map(lambda x: x[:2], layers)
    cluster = latency.Cluster.create(flops=[[1e10, 2e10]] * 2, bandwidth=[[jnp.inf, 1e8]] * 2, latency=[[0.0, 0.0]] * 2)
    share = jnp.ones((2, 2))
    args = {"share list": (layer, cluster, [[1.0, 1.0]] * 2), "share tuple": (layer, cluster, ((1.0, 1.0),) * 2),
            "share float": (layer, cluster, 1.0), "layer list": ([layer], cluster, share),
            "cluster dict": (layer, {"flops": cluster.flops}, share)}[what]
    field = what.split()[0]
    with pytest.raises(ValueError, match=f"field '{field}': expected"):
        solvers.solve_batch("closed_form", *args)
