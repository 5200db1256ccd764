"""Bad input and faults, case by case: each gives one line naming the field or file and exit status 2
(or its own status: 130 for Ctrl-C, 141 for a closed pipe), no traceback, nothing lost."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxsplit import cli, envs, instance
from jaxsplit.agents.run import RUN_FILES, check_run_dir
from jaxsplit.plan import solve_instances

ROOT = Path(__file__).resolve().parents[1]


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_binary_instance_file_names_the_file(tmp_path, capsys):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    _one_line_error(*_cli(capsys, "split", str(path)), str(path), "not UTF-8")


def test_deeply_nested_json_is_an_error(tmp_path, capsys):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    _one_line_error(*_cli(capsys, "split", str(path)), "nested too deeply")


def test_deeply_nested_cluster_file(tmp_path):
    path = tmp_path / "cluster.json"
    path.write_text('{"devices": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match="field 'cluster'.*not JSON"):
        envs.load_cluster(path)


def test_lp_on_extreme_valid_capacities():
    inst = instance.parse_instance({"model": "alexnet", "input_size": [64, 64],
                                    "devices": [{"flops": 1.0}, {"flops": 1e24, "bandwidth": 1e24},
                                                {"flops": 1e12, "bandwidth": 1.0, "latency": 1e6}]})
    plan = solve_instances([inst], "lp")[0]
    assert all(int(r.sum()) == layer.out_height for r, layer in zip(plan.rows, inst.layers))
    assert math.isfinite(plan.latency)


def test_unknown_env_names_the_env_option():
    with pytest.raises(ValueError, match="field 'env': unknown environment 'nope'"):
        envs.EnvSpec(env="nope").base()


def test_kernel_build_errors_are_user_errors():
    from jaxsplit.kernels import KernelBuildError

    assert issubclass(KernelBuildError, ValueError) and issubclass(KernelBuildError, RuntimeError)


# ----------------------------------------------------------------------------- train --out
TRAIN = ["train", "--total-timesteps", "256", "--num-envs", "16", "--num-steps", "16", "--num-minibatches", "2",
         "--update-epochs", "1", "--hidden", "8", "--requests", "16", "--no-progress", "--skip-eval"]


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl", "report.md"])
def test_train_refuses_a_folder_holding_another_runs_files(tmp_path, capsys, name):
    (tmp_path / name).write_text("keep me\n")
    _one_line_error(*_cli(capsys, *TRAIN, "--out", str(tmp_path)), "--out", name, "--overwrite")
    assert (tmp_path / name).read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_train_refuses_empty_paths_files_and_paths_under_files(tmp_path, capsys):
    _one_line_error(*_cli(capsys, *TRAIN, "--out", ""), "--out", "empty path")
    _one_line_error(*_cli(capsys, *TRAIN, "--out="), "--out", "empty path")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    _one_line_error(*_cli(capsys, *TRAIN, "--out", str(a_file)), "is a file")
    _one_line_error(*_cli(capsys, *TRAIN, "--out", str(a_file / "run")), "is a file")
    assert a_file.read_text() == "x"
    _one_line_error(*_cli(capsys, *TRAIN, "--out", str(tmp_path / "r"), "--resume", "--overwrite"), "exclude")


@pytest.mark.parametrize("option, value, field", [
    ("--devices", "0,9", "field 'devices'"), ("--devices", "3,2", "field 'devices'"), ("--devices", "a", "field 'devices'"),
    ("--devices", "2,9", "field 'devices_max'"), ("--churn", "-1", "field 'churn'"), ("--rejoin", "inf", "field 'rejoin'")])
def test_train_refuses_bad_presence_settings(tmp_path, capsys, option, value, field):
    out = tmp_path / "run"
    _one_line_error(*_cli(capsys, *TRAIN, "--env", "alloc-any-v0", option, value, "--out", str(out)), field)
    assert not out.exists()  # refused before the run folder is made


def test_overwrite_removes_only_the_runs_own_files(tmp_path):
    for name in RUN_FILES:
        if name == "checkpoints":
            (tmp_path / name / "3").mkdir(parents=True)
        else:
            (tmp_path / name).write_text("old")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        check_run_dir(tmp_path)
    check_run_dir(tmp_path, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_plot_path_must_be_an_image_file(tmp_path, capsys):
    base = ["evaluate", "--policy", "whole_cluster", "--loads", "0.9", "--episodes", "1", "--requests", "8"]
    _one_line_error(*_cli(capsys, *base, "--plot", str(tmp_path)), "field 'plot'", "folder")
    _one_line_error(*_cli(capsys, *base, "--plot", str(tmp_path / "curve")), "field 'plot'", ".png")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    from jaxsplit import atomic

    path = tmp_path / "report.md"
    path.write_text("old")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with atomic.replacing(path) as tmp:
            tmp.write_text("half")
            raise Boom
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_a_torn_last_metrics_line_is_skipped(tmp_path):
    from jaxsplit.agents.run import read_metrics

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"update": 1}) + "\n" + '{"update": 2, "rew')
    assert read_metrics(tmp_path) == [{"update": 1}]
    (tmp_path / "metrics.jsonl").write_text('{"upd\n' + json.dumps({"update": 1}) + "\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        read_metrics(tmp_path)


# ----------------------------------------------------------------------------- a real process
def test_json_output_into_a_closed_pipe_is_quiet():
    batch = (ROOT / "examples" / "batch.jsonl").read_text() * 64
    proc = subprocess.Popen([sys.executable, "-m", "jaxsplit.cli", "split", "-", "--json"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    proc.stdin.write(batch.encode())
    proc.stdin.close()
    proc.stdout.readline()  # one result, then the reader goes away (as `| head -1` does)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize("part, field, value", [("ppo", "lr", -1.0), ("env", "share_levels", -1)])
def test_a_bad_saved_configuration_names_its_file(tmp_path, part, field, value):
    from jaxsplit.agents.ppo import PPOConfig
    from jaxsplit.agents.run import read_config, run_config_json

    saved = run_config_json(PPOConfig(), envs.EnvSpec(), 0)
    saved[part][field] = value
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=rf"config\.json: field '{field}'"):
        read_config(tmp_path)


def test_ignored_action_settings_are_still_checked():
    with pytest.raises(ValueError, match="field 'share_levels'"):
        envs.EnvSpec(share_levels=-1).overrides()
    with pytest.raises(ValueError, match=r"field 'pair_levels\[1\]'"):
        envs.EnvSpec(pair_levels=(0.5, math.nan)).overrides()


def test_required_kernel_without_a_compiler_is_one_line(tmp_path):
    bindir = Path(sys.executable).parent  # python only: no c++, g++ or clang++ on this PATH
    env = {**os.environ, "JAXSPLIT_CACHE": str(tmp_path), "CXX": "", "JAXSPLIT_KERNELS": "require",
           "PATH": str(bindir)}
    done = subprocess.run([sys.executable, "-m", "jaxsplit.cli", "split", "examples/vgg16_cluster.json"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "jaxsplit split: error: no C++ compiler found (set CXX, or install g++ or clang++)"


def test_an_input_too_small_for_a_torch_model_is_one_error(capfd):
    torch = pytest.importorskip("torch")
    from jaxsplit.bridge.graph import trace

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5), torch.nn.ReLU())
    with pytest.raises(ValueError, match=r"layer '0' \(Conv2d\(3, 8, kernel_size=\(5, 5\).*failed on input shape "
                                         r"\[1, 3, 2, 2\]"):
        trace(model, (1, 3, 2, 2))
    assert capfd.readouterr().err == ""  # torch's ShapeProp prints its own traceback otherwise


@pytest.mark.parametrize("layer, name", [("Conv2d(3, 8, 500)", "kernel_size=(500, 500)"),
                                         ("MaxPool2d(64)", "MaxPool2d(kernel_size=64"),
                                         ("Conv2d(3, 8, (3, 40), stride=2)", "kernel_size=(3, 40)")])
@pytest.mark.slow
def test_a_kernel_wider_than_its_input_names_the_layer_and_kernel(tmp_path, layer, name):
    pytest.importorskip("torch")
    path = tmp_path / "net.py"
    path.write_text("import torch\n"
                    "def make():\n"
                    f"    return torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.{layer})\n")
    done = subprocess.run([sys.executable, "-m", "jaxsplit.cli", "validate", "--model", f"{path}:make",
                           "--input-size", "32", "32"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("jaxsplit validate: error: layer '1' (") and name in lines[0], lines[0]


def test_a_model_factory_that_raises_is_named(tmp_path):
    pytest.importorskip("torch")
    from jaxsplit.bridge.planning import load_model

    path = tmp_path / "net.py"
    path.write_text("def make():\n    raise RuntimeError('no weights here')\n")
    with pytest.raises(ValueError, match=r"field 'model': make\(\) in .* raised RuntimeError: no weights here"):
        load_model(f"{path}:make")
