"""``jaxsplit evaluate --checkpoint RUN_DIR``: the trained policy as the policy ``ppo`` beside the baselines.

The evaluate command loads a run folder itself (``jaxsplit.agents.run.load_policy`` and
``evaluation_env``); the run's config.json (its EnvSpec) rebuilds the environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxsplit import envs
from jaxsplit.agents.ppo import PPOConfig
from jaxsplit.agents.run import evaluation_env, load_policy, train_run
from jaxsplit.cli import main as jaxsplit_main
from jaxsplit.envs import EnvSpec
from jaxsplit.envs.evaluation import METRICS

#: 2 updates of a tiny network (the configuration of tests/test_agent_train_cli.py's run, whose training
#: program is then loaded from the compilation cache)
TINY = PPOConfig(total_timesteps=2 * 16 * 16, num_envs=16, num_steps=16, num_minibatches=2, update_epochs=1,
                 hidden=(16,))
#: the `jaxsplit train` kind of environment (alloc-v0: 4 devices, the default catalogue, the reservation
#: table in the observation, clip_pairs actions), with short episodes
SPEC = EnvSpec(requests=32)
#: a fixed 4-device cluster in the instance format (device 0: the local coordinator)
CLUSTER = {"devices": [{"flops": 2e10}, {"flops": 4e10, "bandwidth": 1.25e8, "latency": 0.001},
                       {"flops": 1e10, "bandwidth": 2.5e8, "latency": 0.0005},
                       {"flops": 8e10, "bandwidth": 1.25e8, "latency": 0.002}]}
EVAL = ["--loads", "0.9", "--episodes", "2", "--requests", "32", "--seed", "3"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, compilation_cache):
    """A tiny real training run (2 updates) on the default catalogue, with its final checkpoint."""
    path = tmp_path_factory.mktemp("evalrun") / "run"
    train_run(TINY, path, SPEC, seed=0, log_every=2, checkpoint_every=2)
    return path


@pytest.fixture
def cluster_file(tmp_path):
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(CLUSTER))
    return path


def one_line_error(err: str) -> str:
    """The error of a command that failed with status 2: one line, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxsplit evaluate: error: "), err
    return lines[0]


@pytest.mark.slow
def test_evaluate_checkpoint_end_to_end_equals_direct_evaluation(run_dir, cluster_file, compilation_cache):
    # a fresh process: the evaluate command imports and loads the run folder itself
    out = subprocess.run([sys.executable, "-m", "jaxsplit.cli", "evaluate", "--checkpoint", str(run_dir),
                          "--policy", "ppo,whole_cluster", "--cluster", str(cluster_file), *EVAL, "--json"],
                         capture_output=True, text=True, env={**os.environ, "JAX_COMPILATION_CACHE_DIR": compilation_cache})
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["policy"] for r in rows] == ["ppo", "whole_cluster"]
    keys = {"policy", "load", "episodes", "requests", "warmup", "seed", "mean_reward", "mean_reward_ci"}
    keys |= set(METRICS) | {m + "_ci" for m in METRICS}
    for row in rows:
        assert set(row) == keys
        assert row["load"] == 0.9 and row["episodes"] == 2 and row["requests"] == 32
        assert row["seed"] == 3 and row["warmup"] == 0.1
    ppo = rows[0]
    assert ppo["mean_latency_s"] > 0 and ppo["invalid_rate"] == 0.0

    # the same figures from the loaded policy evaluated directly on the same environment and episodes
    fn, env, params = load_policy(run_dir, 32, envs.load_cluster(cluster_file))
    assert env.num_devices == 4 and bool(params.fixed_cluster)
    np.testing.assert_allclose(params.cluster_flops, [d["flops"] for d in CLUSTER["devices"]])
    direct = envs.evaluate(fn, env, params, [0.9], episodes=2, requests=32, seed=3, warmup=0.1, name="ppo")[0]
    for metric in METRICS:
        assert ppo[metric] == pytest.approx(direct[metric], rel=1e-6, abs=1e-9), metric
    # the trained policy is not the whole-cluster one: the rows differ
    assert ppo["mean_latency_s"] != rows[1]["mean_latency_s"]


@pytest.mark.slow
def test_models_inside_the_training_catalogue(run_dir, capsys, compilation_cache):
    """A policy trained on the default catalogue evaluates on a request mix of some of its models."""
    argv = ["evaluate", "--checkpoint", str(run_dir), "--models", "vgg16,resnet18", "--policy", "whole_cluster",
            *EVAL, "--json"]
    assert jaxsplit_main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["policy"] for r in rows] == ["whole_cluster", "ppo"]  # ppo comes last when not named
    for row in rows:
        assert row["requests"] == 32 and row["mean_latency_s"] > 0 and np.isfinite(row["invalid_rate"])
    # the policy keeps its catalogue (its observation) with the other models at probability 0; the
    # baselines run on the catalogue of the two models
    p_env, p_params, b_env, _ = evaluation_env(run_dir, 32, None, ("vgg16", "resnet18"))
    assert p_env.models == envs.DEFAULT_MODELS and b_env.models == ("vgg16", "resnet18")
    mix = np.asarray(p_params.mix)
    assert [m for m, p in zip(envs.DEFAULT_MODELS, mix) if p > 0] == ["vgg16", "resnet18"]
    np.testing.assert_allclose(mix.sum(), 1.0, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("models,outside", [("vgg16,googlenet", "googlenet"), ("resnet50", "resnet50")])
def test_models_outside_the_training_catalogue_are_an_error(run_dir, capsys, models, outside):
    assert jaxsplit_main(["evaluate", "--checkpoint", str(run_dir), "--models", models, *EVAL]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert f"model {outside!r}" in err and "catalogue" in err and ",".join(envs.DEFAULT_MODELS) in err


def test_ppo_without_checkpoint_is_an_error(capsys):
    assert jaxsplit_main(["evaluate", "--policy", "ppo,myopic", *EVAL]) == 2
    err = capsys.readouterr().err
    assert "'ppo'" in err and "--checkpoint" in err


def test_missing_run_dir_is_an_error(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert jaxsplit_main(["evaluate", "--checkpoint", str(missing), *EVAL]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such directory" in err


def test_folder_without_run_is_an_error(tmp_path, capsys):
    assert jaxsplit_main(["evaluate", "--checkpoint", str(tmp_path), *EVAL]) == 2
    assert "not a training run folder" in capsys.readouterr().err


@pytest.mark.slow
def test_run_without_checkpoint_is_an_error(run_dir, tmp_path, capsys):
    copy = tmp_path / "nockpt"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "checkpoints")
    assert jaxsplit_main(["evaluate", "--checkpoint", str(copy), *EVAL]) == 2
    assert "no checkpoint in" in capsys.readouterr().err


@pytest.mark.slow
def test_corrupt_checkpoint_is_an_error(run_dir, tmp_path, capsys):
    copy = tmp_path / "corrupt"
    shutil.copytree(run_dir, copy)
    damaged = 0
    for path in (copy / "checkpoints" / "2").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(b"garbage")
            damaged += 1
    assert damaged > 0
    assert jaxsplit_main(["evaluate", "--checkpoint", str(copy), *EVAL]) == 2
    err = capsys.readouterr().err
    assert "unreadable or corrupt" in err and str(copy) in err


@pytest.mark.slow
def test_corrupt_config_is_an_error(run_dir, tmp_path, capsys):
    copy = tmp_path / "badconfig"
    shutil.copytree(run_dir, copy)
    (copy / "config.json").write_text("{not json")
    assert jaxsplit_main(["evaluate", "--checkpoint", str(copy), *EVAL]) == 2
    assert "config.json is unreadable or corrupt" in capsys.readouterr().err


@pytest.mark.slow
def test_cluster_with_other_device_count_names_both(run_dir, tmp_path, capsys):
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"devices": CLUSTER["devices"][:2]}))
    assert jaxsplit_main(["evaluate", "--checkpoint", str(run_dir), "--cluster", str(path), *EVAL]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert "trained for 4 devices" in err and "cluster has 2" in err and str(run_dir) in err
