"""The best_clip baseline: the free_clip action's rule (one definition, actions.clip_free) with its
(cap, floor) searched per load on episodes apart from the evaluated ones."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsplit import cli, envs
from jaxsplit.envs import actions, evaluation, policies

pytestmark = pytest.mark.usefixtures("compilation_cache")  # see tests/conftest.py

#: a small environment: two devices, short episodes, one model (each evaluation program compiles in
#: about 20 s on 2 cores, so the tests compile few)
ENV = envs.make("alloc-n2-v0", models=("alexnet",), requests=16)


@pytest.fixture(scope="module")
def busy_states():
    """12 states of a 4-device environment with random reservations held (the free shares differ
    between devices and states); built directly, without compiling a step."""
    env, params = envs.make("alloc-v0", requests=16)
    obs, state = env.reset(jax.random.key(0), params)
    rng = np.random.default_rng(0)
    m, n = state.res_share.shape
    states = jax.tree.map(lambda a: jnp.broadcast_to(a, (12,) + a.shape), state).replace(
        res_end=jnp.asarray(rng.uniform(-1.0, 2.0, (12, m)), state.res_end.dtype),
        res_share=jnp.asarray(rng.uniform(0.0, 0.15, (12, m, n)) * (rng.uniform(size=(12, m, 1)) < 0.5),
                              state.res_share.dtype),
        last_start=jnp.asarray(rng.uniform(0.0, 1.0, 12), state.last_start.dtype))
    free = np.asarray(jax.vmap(env.free_shares)(states))
    assert len(np.unique(free.round(4))) > 10 and free.min() < 0.5 < free.max()
    return env, params, jnp.broadcast_to(obs, (12,) + obs.shape), states


@pytest.mark.parametrize("cap,floor", [(0.5, 0.25), (1.0, 0.1), (1 / 3, 1 / 3), (0.25, 0.5)])
def test_one_entry_table_gives_the_free_clip_wrappers_shares(busy_states, cap, floor):
    """best_clip at (cap, floor) and the free_clip wrapper's decoded action [cap, floor] are the same
    shares on the same states (the wrapper's floor above the cap included: that is the cap)."""
    env, params, obs, states = busy_states
    wrapped = envs.wrap_action(env, "free_clip")  # continuous, no levels: the action is (cap, floor) itself
    action = jnp.tile(jnp.array([cap, floor], jnp.float32), (12, 1))
    want = np.asarray(jax.vmap(wrapped.decode, in_axes=(0, 0, None))(action, states, params))
    options = dict(caps=(cap,)) if floor > cap else dict(caps=(cap,), floors=(floor,))  # a given floor <= cap
    pol = policies.get("best_clip", env, **options)
    got = np.asarray(jax.vmap(pol, in_axes=(None, 0, 0, None))(jax.random.key(0), obs, states, params))
    np.testing.assert_array_equal(got, want)
    assert got.shape == (12, 4) and got.dtype == np.float32
    if floor < cap:
        assert len(np.unique(got.round(4))) > 1  # the rule really reads the free shares


def test_the_table_entry_of_the_nearest_load_is_used(busy_states):
    env, params, obs, states = busy_states
    pol = policies.get("best_clip", env, loads=(0.3, 1.2), caps=(1.0, 0.5), floors=(1.0, 0.25))
    free = np.asarray(jax.vmap(env.free_shares)(states))
    for load, (cap, floor) in ((0.5, (1.0, 1.0)), (1.0, (0.5, 0.25)), (1.6, (0.5, 0.25))):
        at = jax.tree.map(lambda a: a[0], states).replace(load=jnp.float32(load))
        got = np.asarray(pol(None, obs[0], at, params))
        np.testing.assert_allclose(got, np.clip(free[0], floor, cap), rtol=1e-6)
    assert policies.best_clip in policies.POLICIES.values() and "best_clip" in policies.registered()


@pytest.mark.slow
def test_search_picks_the_pair_with_the_lowest_search_latency():
    """Per load, the searched pair is the one with the lowest mean latency when each pair of the grid
    is evaluated on its own by evaluate (on the search episodes); the scores are those latencies."""
    env, params = ENV
    loads = [0.4, 1.3]
    levels = (0.5, 1.0)  # 3 pairs: every pair is one more compiled evaluate (about 20 s)
    table, scores = evaluation.search_best_clip(env, params, loads, levels=levels, episodes=3, seed=7)
    pairs = np.asarray(actions.clip_pairs(levels))
    assert table.shape == (2, 2) and scores.shape == (len(pairs), 2)
    direct = np.array([[r["mean_latency_s"] for r in envs.evaluate(
        "best_clip", env, params, loads, episodes=3, requests=env.requests, seed=7, caps=(float(cap),),
        floors=(float(floor),))]
        for cap, floor in pairs])  # (pairs, loads)
    np.testing.assert_allclose(scores, direct, rtol=1e-5)
    for j in range(len(loads)):
        k = [i for i, p in enumerate(pairs) if np.allclose(p, table[j])][0]
        assert direct[k, j] <= direct[:, j].min() * (1 + 1e-6)
    assert len(np.unique(direct[:, 1])) > 1  # the pairs really differ at the high load
    with pytest.raises(ValueError, match="'levels'"):
        evaluation.search_best_clip(env, params, loads, levels=(0.5, 1.5))


@pytest.mark.slow
def test_evaluate_searches_on_other_episodes_and_uses_the_table(monkeypatch):
    """evaluate("best_clip") searches once, with a seed other than the evaluation's (here the search
    seed itself, the case where a fixed search seed would coincide), and binds the table it found."""
    env, params = ENV
    loads = (0.3, 1.5)
    searched, bound = [], []
    search, get = evaluation.search_best_clip, policies.get
    monkeypatch.setattr(evaluation, "search_best_clip",
                        lambda *a, **k: searched.append((k["seed"], search(*a, **k))) or searched[-1][1])
    monkeypatch.setattr(policies, "get",
                        lambda name, env_, **options: bound.append((name, options)) or get(name, env_, **options))
    seed = evaluation.SEARCH_SEED
    rows = envs.evaluate("best_clip", env, params, loads, episodes=2, seed=seed)
    assert [r["policy"] for r in rows] == ["best_clip"] * 2 and len(searched) == 1
    search_seed, (table, scores) = searched[0]
    assert search_seed != seed and scores.shape == (15, 2)  # the default grid: clip_pairs of CLIP_LEVELS
    options = [o for name, o in bound if name == "best_clip"][-1]
    assert options["loads"] == loads
    assert options["caps"] == tuple(table[:, 0]) and options["floors"] == tuple(table[:, 1])
    assert evaluation.search_seed(0) == evaluation.SEARCH_SEED  # any other evaluation seed
    # other seeds, so other episode keys (evaluation.run_episodes: fold_in(fold_in(key(seed), s), e))
    key = lambda seed: jax.random.key_data(jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0), 0))
    assert not np.array_equal(key(search_seed), key(seed))


@pytest.mark.parametrize("options,field", [
    (dict(caps=()), "caps"), (dict(loads=(), caps=()), "loads"), (dict(caps=(0.5,), floors=()), "floors"),
    (dict(caps=(1.5,)), "caps"), (dict(caps=(0.0,)), "caps"), (dict(caps=(0.5,), floors=(-0.1,)), "floors"),
    (dict(caps=(0.5,), floors=(1.2,)), "floors"), (dict(caps=(0.25,), floors=(0.5,)), "floors"),
    (dict(loads=(0.3, 1.0), caps=(0.5,)), "caps"), (dict(loads=(0.3,), caps=(0.5,), floors=(0.1, 0.2)), "floors")])
def test_bad_tables_are_one_line_errors_naming_the_field(options, field):
    with pytest.raises(ValueError, match=f"field '{field}'") as err:
        policies.get("best_clip", ENV[0], **options)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_cli_evaluate_best_clip_prints_a_row(monkeypatch, capsys):
    """``jaxsplit evaluate --policy best_clip`` prints its rows (the search stands in: the test above
    runs the real one), having searched on the command's episode length and another seed."""
    calls = []

    def search(env, params, loads, **kw):
        calls.append((env.requests, kw["seed"]))
        return np.array([[1.0, 0.25]] * len(loads)), np.zeros((15, len(loads)))

    monkeypatch.setattr(evaluation, "search_best_clip", search)
    argv = ["evaluate", "--policy", "best_clip", "--env", "alloc-n2-v0", "--loads", "0.5", "--models", "alexnet",
            "--episodes", "2", "--requests", "16", "--json"]
    assert cli.main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["policy"], r["load"]) for r in rows] == [("best_clip", 0.5)] and rows[0]["mean_latency_s"] > 0
    assert calls == [(16, evaluation.SEARCH_SEED)]
    assert cli.main(argv[:-1]) == 0  # the table (the same compiled evaluation)
    assert "best_clip" in capsys.readouterr().out
