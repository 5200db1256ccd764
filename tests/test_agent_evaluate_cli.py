"""``jaxsplit evaluate --checkpoint RUN_DIR``: the trained policy as the policy ``ppo`` beside the baselines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from jaxsplit import envs
from jaxsplit.agents.ppo import PPOConfig
from jaxsplit.agents.run import load_policy, train_run
from jaxsplit.cli import main as jaxsplit_main
from jaxsplit.envs import evaluate_cli
from jaxsplit.envs.evaluation import METRICS

#: the `jaxsplit train` kind of policy: it sees the reservation table, which the baselines' environment
#: (--cluster, --requests) does not show unless the loader asks for it
TINY = PPOConfig(num_envs=8, num_steps=16, total_timesteps=256, update_epochs=1, num_minibatches=2,
                 hidden=(16, 16), env_overrides=(("requests", 32), ("observation", "table")),
                 action="clip_pairs", distribution="categorical", share_levels=4, pair_levels=(0.1, 0.25, 0.5, 1.0))
#: a fixed 4-device cluster in the instance format (device 0: the local coordinator)
CLUSTER = {"devices": [{"flops": 2e10}, {"flops": 4e10, "bandwidth": 1.25e8, "latency": 0.001},
                       {"flops": 1e10, "bandwidth": 2.5e8, "latency": 0.0005},
                       {"flops": 8e10, "bandwidth": 1.25e8, "latency": 0.002}]}
EVAL = ["--loads", "0.5", "--episodes", "2", "--requests", "24", "--seed", "3"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny real training run (2 updates) with its final checkpoint."""
    path = tmp_path_factory.mktemp("evalrun") / "run"
    train_run(TINY, path, seed=0, log_every=2, checkpoint_every=2)
    return path


@pytest.fixture
def cluster_file(tmp_path):
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(CLUSTER))
    return path


def test_envs_never_import_the_agents():
    code = ("import sys, jaxsplit.envs, jaxsplit.envs.evaluate_cli; "
            "assert not [m for m in sys.modules if m.startswith('jaxsplit.agents')], 'agents imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_evaluate_checkpoint_end_to_end_equals_direct_evaluation(run_dir, cluster_file):
    # a fresh process: nothing imported or registered beforehand
    out = subprocess.run([sys.executable, "-m", "jaxsplit.cli", "evaluate", "--checkpoint", str(run_dir),
                          "--policy", "ppo,constant", "--cluster", str(cluster_file), *EVAL, "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["policy"] for r in rows] == ["ppo", "constant"]
    keys = {"policy", "load", "episodes", "requests", "mean_reward", "mean_reward_ci"}
    keys |= set(METRICS) | {m + "_ci" for m in METRICS}
    for row in rows:
        assert set(row) == keys
        assert row["load"] == 0.5 and row["episodes"] == 2 and row["requests"] == 24
    ppo = rows[0]
    assert ppo["mean_latency_s"] > 0 and ppo["invalid_rate"] == 0.0

    # the same figures from the loaded policy evaluated directly on the same environment and episodes
    bw = [d.get("bandwidth", float("inf")) for d in CLUSTER["devices"]]
    cluster = ([d["flops"] for d in CLUSTER["devices"]], bw, [d.get("latency", 0.0) for d in CLUSTER["devices"]])
    env, params = envs.make("alloc-v0", requests=24, cluster=cluster, observation="table")
    fn = load_policy(run_dir, num_devices=4, obs_dim=env.obs_dim)
    direct = envs.evaluate(fn, env, params, [0.5], episodes=2, seed=3, warmup=0.1, name="ppo")[0]
    for metric in METRICS:
        assert ppo[metric] == pytest.approx(direct[metric], rel=1e-6, abs=1e-9), metric
    # the trained policy is not the constant one: the rows differ
    assert ppo["mean_latency_s"] != rows[1]["mean_latency_s"]


def test_the_ppo_loader_is_found_without_registration(monkeypatch):
    from jaxsplit.agents import run

    monkeypatch.setattr(evaluate_cli, "_CHECKPOINT_LOADERS", [])
    assert evaluate_cli.checkpoint_loader() is run.checkpoint_loader
    assert evaluate_cli._CHECKPOINT_LOADERS == [run.checkpoint_loader]
    evaluate_cli.register_checkpoint_loader(run.checkpoint_loader)  # registering twice adds nothing
    assert evaluate_cli._CHECKPOINT_LOADERS == [run.checkpoint_loader]


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


def test_run_without_checkpoint_is_an_error(run_dir, tmp_path, capsys):
    copy = tmp_path / "nockpt"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "checkpoints")
    assert jaxsplit_main(["evaluate", "--checkpoint", str(copy), *EVAL]) == 2
    assert "no checkpoint in" in capsys.readouterr().err


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


def test_corrupt_config_is_an_error(run_dir, tmp_path, capsys):
    copy = tmp_path / "badconfig"
    shutil.copytree(run_dir, copy)
    (copy / "config.json").write_text("{not json")
    assert jaxsplit_main(["evaluate", "--checkpoint", str(copy), *EVAL]) == 2
    assert "config.json is unreadable or corrupt" in capsys.readouterr().err


def test_cluster_with_other_device_count_names_both(run_dir, tmp_path, capsys):
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"devices": CLUSTER["devices"][:2]}))
    assert jaxsplit_main(["evaluate", "--checkpoint", str(run_dir), "--cluster", str(path), *EVAL]) == 2
    err = capsys.readouterr().err
    assert "trained for 4 devices" in err and "has 2" in err and "--cluster" in err


def test_other_catalogue_is_an_error(run_dir, capsys):
    assert jaxsplit_main(["evaluate", "--checkpoint", str(run_dir), "--models", "alexnet", *EVAL]) == 2
    err = capsys.readouterr().err
    assert "catalogue" in err and "alexnet" in err
