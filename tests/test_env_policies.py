"""Baseline policies, evaluate() and the ``jaxsplit evaluate`` command."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsplit import cli, envs
from jaxsplit.commands import evaluate as evaluate_cmd
from jaxsplit.envs import evaluation, policies

CLUSTER = ([2e10, 5e10, 3e10], [np.inf, 1.25e8, 6e7], [0.0, 2e-3, 1e-3])
ENV = envs.make("alloc-v0", cluster=CLUSTER, models=("alexnet", "resnet18"), requests=60)


pytestmark = pytest.mark.usefixtures("compilation_cache")  # see tests/conftest.py


@pytest.mark.slow
def test_every_policy_is_jittable_and_evaluates():
    env, params = ENV
    assert set(policies.registered()) == {"random", "whole_cluster", "free_now", "constant", "best_constant",
                                          "best_clip", "fastest_k", "myopic"}
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
    assert rows[1]["mean_latency_s"] > rows[0]["mean_latency_s"]  # more load, more queueing


@pytest.mark.slow
def test_observation_closure_matches_named_baseline():
    env, params = ENV
    # (the episodes of the next test: one compiled program for the three evaluations)
    named = envs.evaluate("whole_cluster", env, params, loads=[0.6], episodes=4, requests=400)
    closure = envs.evaluate(lambda key, obs: jnp.ones(3), env, params, loads=[0.6], episodes=4, requests=400,
                            name="ones")
    assert closure[0]["policy"] == "ones"
    for m in envs.evaluation.METRICS:
        assert closure[0][m] == pytest.approx(named[0][m], rel=1e-6)


@pytest.mark.slow
def test_whole_cluster_throughput_tracks_arrival_rate():
    env, params = ENV
    rows = envs.evaluate("whole_cluster", env, params, loads=[0.5], episodes=4, requests=400)
    _, state = env.reset(jax.random.key(0), params.replace(load_min=jnp.float32(0.5), load_max=jnp.float32(0.5)))
    assert rows[0]["throughput_rps"] == pytest.approx(float(state.rate), rel=0.15)
    # busy fraction of the cluster is rho, and each request uses U of what it holds
    assert rows[0]["utilization"] == pytest.approx(0.5 * rows[0]["request_utilization"], rel=0.2)


@pytest.mark.slow
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
    best = evaluation.search_best_constant(env, params, [0.3, 1.2], grid=(0.3, 1.0), episodes=2)
    assert envs.search_best_constant is evaluation.search_best_constant
    assert best.shape == (2,) and set(best) <= {0.3, 1.0}
    with pytest.raises(ValueError, match="policy"):
        policies.get("greedy", env)
    with pytest.raises(ValueError, match="'c'"):
        policies.get("constant", env, c=1.5)
    with pytest.raises(ValueError, match="'k'"):
        policies.get("fastest_k", env, k=7)


@pytest.mark.slow
def test_evaluate_baselines_gives_each_baselines_own_records_from_one_program():
    env, params = ENV
    names = ["constant", "random"]
    options = {"constant": {"c": 0.3}}
    # random alone on these episodes is test_every_policy_is_jittable_and_evaluates' compiled program
    common = dict(loads=[0.3, 0.9], seeds=2, episodes=2)
    misses = evaluation._runner.cache_info().misses
    together = envs.evaluate_baselines(names, env, params, options=options, **common)
    assert evaluation._runner.cache_info().misses - misses == 1  # one compiled runner for both
    alone = [r for name in names for r in envs.evaluate(name, env, params, **common, **options.get(name, {}))]
    assert [(r["policy"], r["load"]) for r in together] == [(r["policy"], r["load"]) for r in alone]
    for a, b in zip(together, alone):
        assert a.keys() == b.keys()
        for key, value in b.items():
            assert a[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key
    with pytest.raises(ValueError, match="'policy'"):
        envs.evaluate_baselines(["whole_cluster", "greedy"], env, params, **common)


def test_evaluate_rejects_bad_input():
    env, params = ENV
    for kwargs, field in ((dict(loads=[]), "loads"), (dict(loads=[0.0]), "loads"),
                          (dict(loads=[0.5], episodes=0), "episodes"), (dict(loads=[0.5], warmup=1.0), "warmup")):
        with pytest.raises(ValueError, match=field):
            envs.evaluate("whole_cluster", env, params, **kwargs)


@pytest.mark.slow
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
    evaluate_cmd.print_table(rows)
    out = capsys.readouterr().out
    assert "whole_cluster" in out and "constant" in out


@pytest.mark.parametrize("extra,field", [(["--policy", "greedy"], "policy"), (["--loads", "0.3,x"], "loads"),
                                         (["--loads", "-1"], "loads"), (["--cluster", "/nonexistent.json"], "cluster"),
                                         (["--models", "vgg17"], "models"), (["--episodes", "0"], "episodes"),
                                         (["--share", "2"], "share"), (["--env", "nope"], "name")])
def test_cli_errors_name_the_field(extra, field, capsys):
    assert cli.main(["evaluate", "--requests", "10", "--episodes", "1", *extra]) == 2
    assert field in capsys.readouterr().err


@pytest.mark.slow
def test_cli_checkpoint_loads_the_run_folder_explicitly(monkeypatch, capsys):
    """--checkpoint goes through jaxsplit.agents.run.load_policy / evaluation_env, imported by the evaluate
    command itself (no loader registration): stand-ins for both show what the command asks of them."""
    from jaxsplit.agents import run

    assert evaluate_cmd.load_policy is run.load_policy and evaluate_cmd.evaluation_env is run.evaluation_env
    calls = []

    def load_policy(run_dir, requests, cluster, models, params):
        calls.append(("load_policy", run_dir, requests, cluster, models, params))
        env, params = envs.make("alloc-n2-v0", models=models, requests=requests)  # the settings of the test above
        return lambda key, obs: jnp.ones(env.num_devices), env, params

    def evaluation_env(run_dir, requests, cluster, models, params):
        calls.append(("evaluation_env", run_dir, requests, cluster, models, params))
        env, params = envs.make("alloc-n2-v0", models=models, requests=requests)
        return env, params, env, params

    monkeypatch.setattr(evaluate_cmd, "load_policy", load_policy)
    monkeypatch.setattr(evaluate_cmd, "evaluation_env", evaluation_env)
    argv = ["evaluate", "--policy", "", "--checkpoint", "runs/x", "--loads", "0.3,0.8", "--models", "alexnet",
            "--episodes", "2", "--requests", "40", "--churn", "0.5", "--json"]
    assert cli.main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    want = ("runs/x", 40, None, ("alexnet",), {"churn": 0.5})
    assert calls == [("load_policy", *want), ("evaluation_env", *want)]
    assert [r["policy"] for r in rows] == ["ppo", "ppo"] and [r["load"] for r in rows] == [0.3, 0.8]
    assert all(r["invalid_rate"] == 0 and r["requests"] == 40 for r in rows)
    # with a checkpoint the environment is the run's: --env is refused before anything is loaded
    calls.clear()
    assert cli.main([*argv, "--env", "alloc-v0"]) == 2
    assert "'env'" in capsys.readouterr().err and calls == []


@pytest.mark.slow
def test_best_constant_uses_the_share_searched_at_each_load(monkeypatch):
    """evaluate("best_constant") takes, at each load, the share that search_best_constant picked there
    (not the unsearched default table, which is the whole cluster). (It replaces the test of the report's
    own best_constant table: the report now evaluates through envs.evaluate.)"""
    env, params = envs.make("alloc-v0", models=("alexnet", "resnet18"), requests=32)
    loads = (0.3, 1.5)
    searched, bound = [], []
    search, get = evaluation.search_best_constant, policies.get
    monkeypatch.setattr(evaluation, "search_best_constant",
                        lambda *a, **k: searched.append(search(*a, **k)) or searched[-1])
    monkeypatch.setattr(policies, "get", lambda name, env_, **options: bound.append((name, options)) or get(name, env_, **options))
    rows = envs.evaluate("best_constant", env, params, loads, episodes=2)
    assert [r["policy"] for r in rows] == ["best_constant"] * 2 and len(searched) == 1
    want = searched[0]
    options = [o for name, o in bound if name == "best_constant"][0]
    assert options["loads"] == loads and options["shares"] == tuple(float(c) for c in want)
    best = get("best_constant", env, **options)
    for load, share in zip(loads, want):
        at = params.replace(load_min=np.float32(load), load_max=np.float32(load))
        obs, state = env.reset(jax.random.key(0), at)
        np.testing.assert_allclose(np.asarray(best(jax.random.key(1), obs, state, at)), share, rtol=1e-6)
    assert want[-1] < 1.0  # overloaded: the whole cluster is not the best constant


@pytest.mark.slow
def test_run_episodes_runs_stacked_loads_like_one_call_per_load():
    """run_episodes with several loads (one compiled call, as evaluate runs them) gives each load's records
    as a call without the other load. (It replaces the test of the report's own rollout.)"""
    env, params = envs.make("alloc-v0", models=("alexnet", "resnet18"), requests=24)
    act = lambda key, obs, state, params, aux: jnp.full((env.num_devices,), 0.5, jnp.float32)
    both = evaluation.run_episodes(env, params, act, [0.4, 1.3], episodes=3, seed=5)["latency"]
    assert both.shape == (2, 3, 24)
    # the second load in both slots (the same shapes: the same compiled call)
    alone = evaluation.run_episodes(env, params, act, [1.3, 1.3], episodes=3, seed=5)["latency"]
    np.testing.assert_allclose(both[1], alone[0], rtol=1e-5)
    np.testing.assert_array_equal(alone[0], alone[1])
    assert both[1].mean() > both[0].mean()  # the loads really differ, and come back in their order


def test_episode_metrics_by_hand():
    """The per-episode metrics of records whose answers are known: 100 requests of latency 1..100 s
    (shuffled), arriving one per second, after a warm-up of 10 requests."""
    from jaxsplit.envs.evaluation import episode_metrics

    rng = np.random.default_rng(0)
    lat = np.concatenate([np.full(10, 1000.0), rng.permutation(np.arange(1.0, 101.0))])
    n = len(lat)
    recs = {"latency": lat, "e_ref": np.full(n, 2.0), "flop": np.full(n, 3.0), "arrival": np.arange(n, dtype=float),
            "capacity": np.full(n, 4.0), "utilization": np.full(n, 0.5), "invalid": (np.arange(n) % 4 == 0) * 1.0,
            "reward": -lat}
    m = episode_metrics(recs, warmup=10)
    kept = lat[10:]
    span = np.max(np.arange(10, n) + kept) - 10.0
    assert m["mean_latency_s"] == pytest.approx(50.5)
    # linear interpolation between order statistics: rank 0.95 * 99 = 94.05 -> 95.05
    assert m["p95_latency_s"] == pytest.approx(95.05) and m["p99_latency_s"] == pytest.approx(99.01)
    assert m["normalized_latency"] == pytest.approx(25.25)
    assert m["utilization"] == pytest.approx(3.0 * 100 / (4.0 * span))
    assert m["throughput_rps"] == pytest.approx(100 / span)
    assert m["invalid_rate"] == pytest.approx(0.25) and m["mean_reward"] == pytest.approx(-50.5)
    assert m["request_utilization"] == pytest.approx(0.5)
