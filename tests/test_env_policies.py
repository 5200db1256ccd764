"""Baseline policies, evaluate() and the ``jaxsplit evaluate`` command."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsplit import cli, envs
from jaxsplit.envs import evaluate_cli, policies

CLUSTER = ([2e10, 5e10, 3e10], [np.inf, 1.25e8, 6e7], [0.0, 2e-3, 1e-3])
ENV = envs.make("alloc-v0", cluster=CLUSTER, models=("alexnet", "resnet18"), requests=60)


def test_every_policy_is_jittable_and_evaluates():
    env, params = ENV
    assert set(policies.registered()) == {"random", "whole_cluster", "free_now", "constant", "best_constant",
                                          "fastest_k", "myopic"}
    obs, state = env.reset(jax.random.key(0), params)
    for name in policies.registered():
        act = jax.jit(policies.get(name, env))(jax.random.key(1), obs, state, params)
        assert act.shape == (3,) and act.dtype == jnp.float32
        assert np.all((act >= 0) & (act <= 1)), name
    rows = envs.evaluate("random", env, params, loads=[0.3, 0.9], seeds=2, episodes=2)
    assert [r["load"] for r in rows] == [0.3, 0.9]
    for r in rows:
        assert r["episodes"] == 4 and r["policy"] == "random"
        for m in envs.evaluation.METRICS:
            assert np.isfinite(r[m]) and np.isfinite(r[m + "_ci"]) and r[m + "_ci"] >= 0
        assert 0 < r["utilization"] <= 1 and 0 < r["request_utilization"] <= 1
        assert r["p99_latency_s"] >= r["p95_latency_s"] >= 0
    assert rows[1]["mean_latency_s"] > rows[0]["mean_latency_s"]  # more load, more queueing


def test_observation_closure_matches_named_baseline():
    env, params = ENV
    named = envs.evaluate("whole_cluster", env, params, loads=[0.6], episodes=3)
    closure = envs.evaluate(lambda key, obs: jnp.ones(3), env, params, loads=[0.6], episodes=3, name="ones")
    assert closure[0]["policy"] == "ones"
    for m in envs.evaluation.METRICS:
        assert closure[0][m] == pytest.approx(named[0][m], rel=1e-6)


def test_whole_cluster_throughput_tracks_arrival_rate():
    env, params = ENV
    rows = envs.evaluate("whole_cluster", env, params, loads=[0.5], episodes=4, requests=400)
    _, state = env.reset(jax.random.key(0), params.replace(load_min=jnp.float32(0.5), load_max=jnp.float32(0.5)))
    assert rows[0]["throughput_rps"] == pytest.approx(float(state.rate), rel=0.15)
    # busy fraction of the cluster is rho, and each request uses U of what it holds
    assert rows[0]["utilization"] == pytest.approx(0.5 * rows[0]["request_utilization"], rel=0.2)


def test_fastest_k_free_now_myopic_and_best_constant():
    env, params = ENV
    obs, state = env.reset(jax.random.key(0), params)
    np.testing.assert_array_equal(policies.get("fastest_k", env, k=1)(None, obs, state, params), [0, 1, 0])
    np.testing.assert_array_equal(policies.get("fastest_k", env, k=2)(None, obs, state, params), [0, 1, 1])
    # a reservation holding 0.6 of every device until t = 1 s
    busy = state.replace(res_end=state.res_end.at[0].set(1.0), res_share=state.res_share.at[0].set(0.6))
    o = env.observation(busy)
    np.testing.assert_allclose(policies.get("free_now", env)(None, o, busy, params), 0.4, rtol=1e-6)
    full = state.replace(res_end=state.res_end.at[0].set(1.0), res_share=state.res_share.at[0].set(1.0))
    np.testing.assert_allclose(policies.get("free_now", env)(None, env.observation(full), full, params), 1.0)
    # myopic finishes no later than any of its candidates
    act = policies.get("myopic", env)(None, o, busy, params)
    finish = jax.jit(jax.vmap(lambda a: env.start_time(busy, env.clean_action(a, params)[0])
                              + env.exec_time(busy.cluster, env.clean_action(a, params)[0], busy.model)))
    cands = policies.myopic_candidates(o, busy, params, env)
    times = np.asarray(finish(jnp.concatenate([act[None], cands])))
    assert times[0] <= times[1:].min() + 1e-9 and len(cands) == 2 * 3 + 3
    table = policies.get("best_constant", env, loads=(0.3, 1.0), shares=(0.2, 0.9))
    s3 = state.replace(load=jnp.float32(0.4))
    np.testing.assert_allclose(table(None, o, s3, params), 0.2)
    best = policies.search_best_constant(env, params, [0.3, 1.2], grid=(0.3, 1.0), episodes=2)
    assert best.shape == (2,) and set(best) <= {0.3, 1.0}
    with pytest.raises(ValueError, match="policy"):
        policies.get("greedy", env)
    with pytest.raises(ValueError, match="'c'"):
        policies.get("constant", env, c=1.5)
    with pytest.raises(ValueError, match="'k'"):
        policies.get("fastest_k", env, k=7)


def test_evaluate_rejects_bad_input():
    env, params = ENV
    for kwargs, field in ((dict(loads=[]), "loads"), (dict(loads=[0.0]), "loads"),
                          (dict(loads=[0.5], episodes=0), "episodes"), (dict(loads=[0.5], warmup=1.0), "warmup")):
        with pytest.raises(ValueError, match=field):
            envs.evaluate("whole_cluster", env, params, **kwargs)


def test_cli_json_table_and_plot(tmp_path, capsys):
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"devices": [{"flops": 2e10, "bandwidth": None, "latency": 0.0},
                                            {"flops": 5e10, "bandwidth": 1.25e8, "latency": 0.002, "share": 0.3}]}))
    png = tmp_path / "lat.png"
    argv = ["evaluate", "--policy", "whole_cluster,constant", "--share", "0.6", "--loads", "0.3,0.8", "--cluster", str(path),
            "--models", "alexnet", "--episodes", "2", "--requests", "40", "--json", "--plot", str(png)]
    assert cli.main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["policy"], r["load"]) for r in rows] == [("whole_cluster", 0.3), ("whole_cluster", 0.8),
                                                         ("constant", 0.3), ("constant", 0.8)]
    for r in rows:
        for key in ("mean_latency_s", "p95_latency_s", "p99_latency_s", "utilization", "request_utilization",
                    "throughput_rps", "invalid_rate"):
            assert isinstance(r[key], float) and r[key] >= 0
    assert png.stat().st_size > 1000
    evaluate_cli.print_table(rows)
    out = capsys.readouterr().out
    assert "whole_cluster" in out and "constant" in out


@pytest.mark.parametrize("extra,field", [(["--policy", "greedy"], "policy"), (["--loads", "0.3,x"], "loads"),
                                         (["--loads", "-1"], "loads"), (["--cluster", "/nonexistent.json"], "cluster"),
                                         (["--models", "vgg17"], "models"), (["--episodes", "0"], "episodes"),
                                         (["--share", "2"], "share"), (["--env", "nope"], "name")])
def test_cli_errors_name_the_field(extra, field, capsys):
    assert cli.main(["evaluate", "--requests", "10", "--episodes", "1", *extra]) == 2
    assert field in capsys.readouterr().err


def test_cli_checkpoint_hook(monkeypatch, capsys):
    monkeypatch.setattr(evaluate_cli, "_CHECKPOINT_LOADERS", [])
    monkeypatch.setitem(__import__("sys").modules, "jaxsplit.agents", None)  # nothing to import
    assert cli.main(["evaluate", "--policy", "", "--checkpoint", "runs/x", "--requests", "10"]) == 2
    assert "checkpoint" in capsys.readouterr().err

    def loader(run_dir, env_name, overrides):
        env, params = envs.make(env_name, **overrides)
        return f"learned:{run_dir}", env, params, lambda key, obs: jnp.ones(env.num_devices)

    evaluate_cli.register_checkpoint_loader(loader)
    argv = ["evaluate", "--policy", "", "--checkpoint", "runs/x", "--loads", "0.5", "--models", "alexnet",
            "--env", "alloc-n2-v0", "--episodes", "2", "--requests", "20", "--json"]
    assert cli.main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["policy"] == "learned:runs/x" and rows[0]["invalid_rate"] == 0
