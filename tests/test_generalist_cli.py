"""The generalist (alloc-any-v0, the "sets" observation) through the command line: any cluster of up
to N devices, any models (a torch module read by the bridge included), a report of two device
counts, and the policy on an unpadded environment equal to the padded one."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxsplit import envs
from jaxsplit.agents.ppo import PPOConfig
from jaxsplit.agents.run import evaluation_env, load_run, train_run
from jaxsplit.cli import main as jaxsplit_main

pytestmark = pytest.mark.slow  # every test of the module trains or runs real processes
ROOT = Path(__file__).resolve().parent.parent
TINY = PPOConfig(total_timesteps=2 * 16 * 16, num_envs=16, num_steps=16, num_minibatches=2, update_epochs=1,
                 hidden=(16,))
SPEC = envs.EnvSpec(env="alloc-any-v0", requests=32, models="alexnet,mobilenet_v2")
#: three devices, fewer than the generalist's N = 8
CLUSTER3 = {"devices": [{"flops": 2e10}, {"flops": 4e10, "bandwidth": 1.25e8, "latency": 0.001},
                        {"flops": 1.5e11, "bandwidth": 2.5e8, "latency": 0.0005}]}
EVAL = ["--loads", "0.9", "--episodes", "2", "--requests", "24", "--seed", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, compilation_cache):
    path = tmp_path_factory.mktemp("generalist") / "run"
    train_run(TINY, path, SPEC, seed=0, log_every=2, checkpoint_every=2)
    return path


def _evaluate(capsys, *argv: str) -> tuple[int, list[dict], str]:
    code = jaxsplit_main(["evaluate", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else []), err


def test_a_smaller_cluster_and_unseen_models(run_dir, tmp_path, capsys):
    """A 3-device cluster and models outside the training catalogue: the policy's rows are there and
    finite, and the environment is the padded cluster with the requested catalogue."""
    path = tmp_path / "c3.json"
    path.write_text(json.dumps(CLUSTER3))
    code, rows, err = _evaluate(capsys, "--checkpoint", str(run_dir), "--policy", "whole_cluster,ppo",
                                "--cluster", str(path), "--models", "resnet50,yolov2_tiny@160", *EVAL)
    assert code == 0, err
    assert [r["policy"] for r in rows] == ["whole_cluster", "ppo"]
    assert all(np.isfinite(r["mean_latency_s"]) and r["invalid_rate"] == 0 for r in rows)
    _, _, env, params = evaluation_env(run_dir, 24, ([2e10, 4e10, 1.5e11], [np.inf, 1.25e8, 2.5e8],
                                                      [0.0, 1e-3, 5e-4]), ("resnet50", "yolov2_tiny@160"))
    assert env.num_devices == 8 and np.asarray(params.cluster_present).tolist() == [True] * 3 + [False] * 5
    assert env.models == ("resnet50", "yolov2_tiny@160")


def test_a_bridge_extracted_model_runs_through_evaluate(run_dir, capsys):
    pytest.importorskip("torch")
    spec = str(ROOT / "examples" / "edge_cnn.py") + ":make"
    code, rows, err = _evaluate(capsys, "--checkpoint", str(run_dir), "--policy", "ppo,free_now", "--models", spec,
                                "--devices", "3", *EVAL)
    assert code == 0, err
    assert {r["policy"] for r in rows} == {"ppo", "free_now"}
    assert all(np.isfinite(r["mean_latency_s"]) for r in rows)


def test_a_cluster_above_n_is_refused(run_dir, tmp_path, capsys):
    nine = {"devices": [{"flops": 2e10}] + [{"flops": 1e10, "bandwidth": 1e8, "latency": 1e-3}] * 8}
    path = tmp_path / "c9.json"
    path.write_text(json.dumps(nine))
    code, _, err = _evaluate(capsys, "--checkpoint", str(run_dir), "--cluster", str(path), *EVAL)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "up to 8 devices" in lines[0] and "9" in lines[0], err


def test_policy_on_an_unpadded_environment_equals_the_padded_one(run_dir):
    """Trainer.policy(layout=) on a 3-device environment gives the actions of the trained layout on the
    same cluster padded to 8 devices, state for state."""
    trainer, runner = load_run(run_dir)
    cluster = ([2e10, 4e10, 1.5e11], [np.inf, 1.25e8, 2.5e8], [0.0, 1e-3, 5e-4])
    small, sp = SPEC.make(num_devices=3, cluster=cluster, churn=0.0, load=1.0)
    big, bp = SPEC.make(cluster=cluster, churn=0.0, load=1.0)
    act_small = jax.jit(trainer.policy(runner, layout=small.observation_space().layout))
    act_big = jax.jit(trainer.policy(runner))
    key = jax.random.key(4)
    os_, ss = small.reset(key, sp)
    ob, sb = big.reset(key, bp)
    step_s, step_b = jax.jit(small.step), jax.jit(big.step)
    for t in range(24):
        a_s, a_b = act_small(key, os_), act_big(key, ob)
        assert int(a_s) == int(a_b), t
        k = jax.random.fold_in(key, t)
        os_, ss, rs, *_ = step_s(k, ss, a_s, sp)
        ob, sb, rb, *_ = step_b(k, sb, a_b, bp)
        np.testing.assert_allclose(float(rs), float(rb), rtol=1e-6)


def test_the_report_covers_two_device_counts(tmp_path, compilation_cache):
    out = tmp_path / "run"
    code = jaxsplit_main(["train", "--env", "alloc-any-v0", "--models", "alexnet", "--requests", "32",
                          "--total-timesteps", "512", "--num-envs", "16", "--num-steps", "16", "--num-minibatches", "2",
                          "--update-epochs", "1", "--hidden", "16", "--out", str(out), "--no-progress",
                          "--eval-policies", "whole_cluster", "--eval-loads", "0.9", "--eval-episodes", "2",
                          "--eval-requests", "16", "--devices", "2,5"])
    assert code == 0
    text = (out / "report.md").read_text()
    assert "by policy and load, 2 devices" in text and "by policy and load, 5 devices" in text
    assert "--devices 5" in text
    records = json.loads((out / "evaluation.json").read_text())
    assert sorted({r["devices"] for r in records}) == [2, 5]
    assert {r["policy"] for r in records} == {"whole_cluster", "ppo"}


def test_a_learned_item_layer_keeps_the_network_invariant():
    """SetActorCritic with a learned layer per item (item_hidden): permuting the devices permutes the
    per-device logits alike, and the value does not change."""
    from jaxsplit.agents.networks import SetActorCritic

    env, params = envs.EnvSpec(env="alloc-any-v0", action="per_device").make(devices_min=6)
    obs, _ = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.key(5), 4), params)
    layout = env.observation_space(params).layout
    net = SetActorCritic(num_devices=8, layout=layout, per_item="devices", levels=4, item_hidden=(8,))
    weights = net.init(jax.random.key(0), obs[0])
    glob, sets = layout.split(obs)
    perm = np.array([0, 5, 2, 7, 1, 3, 6, 4])
    permuted = np.concatenate([glob, sets["devices"][:, perm].reshape(4, -1), sets["slots"].reshape(4, -1)], -1)
    (logits,), value = net.apply(weights, obs)
    (logits_p,), value_p = net.apply(weights, permuted)
    np.testing.assert_allclose(np.asarray(logits)[:, perm], np.asarray(logits_p), atol=1e-5)
    np.testing.assert_allclose(value, value_p, atol=1e-5)
    assert not np.allclose(np.asarray(logits)[:, 1], np.asarray(logits)[:, 6])  # the devices differ: a real check
