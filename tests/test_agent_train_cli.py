"""``jaxsplit train`` end to end on the real environment (small settings)."""

from __future__ import annotations

import json

import pytest

from jaxsplit.agents import train_cli
from jaxsplit.cli import main as jaxsplit_main

SMALL = ["--total-timesteps", "4096", "--num-envs", "16", "--num-steps", "32", "--num-minibatches", "4",
         "--log-every", "2", "--checkpoint-every", "4", "--eval-loads", "0.5", "1.0", "--eval-episodes", "2",
         "--no-progress"]


def test_train_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    assert train_cli.main(["--out", str(out), *SMALL]) == 0
    for name in ("config.json", "metrics.jsonl", "evaluation.json", "report.md", "training_curve.png",
                 "latency_vs_load.png"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "8").is_dir()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == list(range(1, 9))
    results = json.loads((out / "evaluation.json").read_text())
    policies = {r["policy"] for r in results}
    assert "ppo" in policies
    assert all(r["mean_latency_s"] > 0 and r["p99_latency_s"] >= r["p95_latency_s"] for r in results)
    assert {r["load"] for r in results} == {0.5, 1.0}
    assert "ppo" in (out / "report.md").read_text()
    # a second fresh run into the same folder is refused and keeps the checkpoint
    assert jaxsplit_main(["train", "--out", str(out), *SMALL]) == 2
    assert (out / "checkpoints" / "8").is_dir()


@pytest.mark.parametrize("flag,value,field", [("--num-envs", "0", "num_envs"), ("--lr", "-1", "lr"),
                                              ("--log-every", "0", "log-every"), ("--gamma", "2", "gamma")])
def test_bad_flags_raise_value_error_naming_the_field(tmp_path, flag, value, field):
    with pytest.raises(ValueError, match=field):
        train_cli.main(["--out", str(tmp_path / "x"), *SMALL, flag, value])


def test_report_best_constant_uses_the_share_searched_at_each_load():
    """The report's best_constant takes, at each evaluation load, the share its search picked there
    (not the unsearched default table, which is the whole cluster)."""
    import jax
    import numpy as np

    from jaxsplit import envs
    from jaxsplit.agents import report
    from jaxsplit.envs import policies

    env, params = envs.make("alloc-v0", models=("alexnet", "resnet18"), requests=32)
    loads = (0.3, 1.5)
    want = policies.search_best_constant(env, params, loads)
    best = report._baseline_policies(env, params, loads)["best_constant"]
    for load, share in zip(loads, want):
        at = params.replace(load_min=np.float32(load), load_max=np.float32(load))
        obs, state = env.reset(jax.random.key(0), at)
        np.testing.assert_allclose(np.asarray(best(jax.random.key(1), obs, state, at)), share, rtol=1e-6)
    assert want[-1] < 1.0  # overloaded: the whole cluster is not the best constant


def test_report_rollout_runs_stacked_loads_like_one_call_per_load():
    """rollout_latencies with params stacked over loads (one compiled call, as the final evaluation
    runs it) gives each load's latencies as a call with that load's params alone."""
    import jax
    import numpy as np

    from jaxsplit import envs
    from jaxsplit.agents import report
    from jaxsplit.envs import policies

    env, _ = envs.make("alloc-v0", models=("alexnet", "resnet18"), requests=24)
    at_load = [envs.make("alloc-v0", models=("alexnet", "resnet18"), requests=24, load=load)[1] for load in (0.4, 1.3)]
    stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *at_load)
    policy = policies.get("constant", env, c=0.5)
    both = report.rollout_latencies(policy, env, stacked, 3, jax.random.PRNGKey(5))
    assert both.shape == (2, 3, 24)
    alone = report.rollout_latencies(policy, env, at_load[1], 3, jax.random.PRNGKey(5))  # the second load
    np.testing.assert_allclose(both[1], alone, rtol=1e-5)
    assert both[1].mean() > both[0].mean()  # the loads really differ, and come back in their order
