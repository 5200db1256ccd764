"""Device presence and churn: the numpy twin step by step, the churn statistics against their
definition, padding with absent devices changes nothing, no NaN with a lone coordinator, the set
network's permutation and padding invariance, and bad presence settings."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsplit import envs
from jaxsplit.agents.networks import SetActorCritic
from jaxsplit.agents.ppo import PPOConfig, Trainer
from jaxsplit.envs import policies
from jaxsplit.envs.twin import NumpyAllocationEnv

#: a fixed cluster of three devices (coordinator first), padded in the larger environments
CLUSTER3 = ([2e10, 5e9, 3e10], [np.inf, 5e7, 2e7], [0.0, 1e-3, 2e-3])
CLUSTER4 = ([2e10, 5e9, 3e10, 1e10], [np.inf, 5e7, 2e7, 1e8], [0.0, 1e-3, 2e-3, 0.5e-3])


def _actions(rng: np.random.Generator, steps: int, n: int) -> np.ndarray:
    """Random shares with exact 0 and 1, NaN, inf and some all-zero rows (as test_env_twin)."""
    a = rng.uniform(-0.2, 1.2, (steps, n))
    pick = rng.random((steps, n))
    a[pick < 0.1] = 0.0
    a[(pick >= 0.1) & (pick < 0.2)] = 1.0
    a[(pick >= 0.2) & (pick < 0.23)] = np.nan
    a[(pick >= 0.23) & (pick < 0.25)] = np.inf
    a[rng.random(steps) < 0.03] = 0.0
    return a


def _scan(env, params):
    """jit(states0, keys, actions) -> per-step records; the new state is kept whole so that any
    observation kind can be computed from it afterwards (obs == env.observation(new) after auto-reset)."""

    def body(state, inp):
        key, action = inp
        obs, new, reward, _, trunc, info = env.step(key, state, action, params)
        info = {k: v for k, v in info.items() if k != "final_observation"}
        return new, dict(obs=obs, state=new, reward=reward, trunc=trunc, **info)

    return jax.jit(lambda s, keys, acts: jax.lax.scan(body, s, (keys, acts))[1])


# ----------------------------------------------------------------------------- 1. the numpy twin
def test_twin_matches_under_presence_and_churn():
    steps, requests = 240, 60
    rng = np.random.default_rng(11)
    with jax.enable_x64(True):
        # alloc-any-v0's devices (N = 8, 2..8 per episode) with churn fast enough that devices leave
        # and come back every few requests
        env, params = envs.make("alloc-any-v0", requests=requests, slots=6, observation="table", churn=1.0,
                                rejoin=1.5, load_min=0.5, load_max=2.5, reward_scale="model")
        assert env.dtype == jnp.float64 and env.num_devices == 8
        actions = _actions(rng, steps, env.num_devices)
        obs0, state0 = env.reset(jax.random.key(5), params)
        recs = _scan(env, params)(state0, jax.random.split(jax.random.key(6), steps), jnp.asarray(actions))
        recs = jax.tree.map(np.asarray, recs)
        obs0 = np.asarray(obs0)
    st = recs["state"]
    twin = NumpyAllocationEnv(env.num_devices, env.slots, env.models, requests=requests, observation="table")
    cluster = lambda c, t=None: tuple(np.asarray(x if t is None else x[t]) for x in (c.flops, c.bandwidth, c.latency))  # noqa: E731
    tobs = twin.reset(cluster(state0.cluster), float(state0.load), int(state0.model), np.asarray(state0.pool))
    np.testing.assert_allclose(tobs, obs0, rtol=1e-9, atol=1e-12)
    prev_time, left, back, resets, invalids, partial = float(state0.time), 0, 0, 0, 0, 0
    prev_present = np.asarray(state0.present)
    for t in range(steps):
        trunc = bool(recs["trunc"][t])
        gap = 0.0 if trunc else st.time[t] - prev_time
        tobs, treward, tinfo = twin.step(actions[t], gap, int(st.model[t]), None if trunc else st.present[t])
        where = f"step {t}"
        for k in ("latency", "wait", "exec_time", "utilization", "capacity"):
            np.testing.assert_allclose(recs[k][t], tinfo[k], rtol=1e-9, atol=1e-12, err_msg=f"{k} at {where}")
        np.testing.assert_allclose(recs["reward"][t], treward, rtol=1e-9, atol=1e-12, err_msg=f"reward at {where}")
        assert bool(recs["invalid"][t]) == tinfo["invalid"] and int(recs["devices"][t]) == tinfo["devices"], where
        assert not np.any(tinfo["share"][~prev_present]), where  # nothing given on an absent device
        if trunc:
            tobs = twin.reset(cluster(st.cluster, t), float(st.load[t]), int(st.model[t]), st.pool[t])
            resets += 1
        else:
            left += int(np.sum(prev_present & ~st.present[t]))
            back += int(np.sum(~prev_present & st.present[t]))
        np.testing.assert_allclose(recs["obs"][t], tobs, rtol=1e-9, atol=1e-12, err_msg=f"obs at {where}")
        partial += int(st.present[t].sum() < st.pool[t].sum())
        invalids += tinfo["invalid"]
        prev_time, prev_present = st.time[t], st.present[t]
    # devices really left and came back, episodes of several sizes, resets and invalid steps happened
    assert left >= 20 and back >= 20 and partial >= steps // 4, (left, back, partial)
    assert len(set(st.pool.sum(1).tolist())) >= 3 and resets == steps // requests and invalids > 0


# ----------------------------------------------------------------------------- 2. churn statistics
def _z(events: np.ndarray, prob: np.ndarray) -> float:
    """z-score of a count of independent Bernoulli events with known probabilities: (sum x - sum p) /
    sqrt(sum p (1 - p)) (the binomial standard error, exact for unequal p)."""
    return float((events.sum() - prob.sum()) / np.sqrt(np.sum(prob * (1 - prob))))


def test_churn_leave_and_return_follow_their_definition():
    churn, rejoin, load, num_envs, steps = 0.5, 1.0, 1.0, 256, 48
    env, params = envs.make("alloc-any-v0", requests=10_000, slots=4, models=("alexnet",), load=load, churn=churn,
                            rejoin=rejoin)
    keys = jax.random.split(jax.random.key(0), num_envs)
    _, state0 = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    run = _scan(env, params)
    recs = jax.vmap(run)(state0, jax.vmap(lambda k: jax.random.split(k, steps))(keys),
                         jnp.ones((num_envs, steps, env.num_devices)))
    st = jax.tree.map(np.asarray, recs["state"])
    assert not recs["trunc"].any()
    before = np.concatenate([np.asarray(state0.present)[:, None], st.present[:, :-1]], axis=1)  # (E, T, N)
    after, pool = st.present, st.pool
    # the pool is fixed per episode, the coordinator never leaves, a device outside the pool never appears
    assert np.all(pool == np.asarray(state0.pool)[:, None])
    assert after[..., 0].all() and not np.any(after & ~pool)
    # the pool size is uniform in [2, 8] (7 values, 256 draws: each about 37 +- 6)
    counts = np.bincount(np.asarray(state0.pool).sum(1), minlength=9)
    assert counts[:2].sum() == 0 and counts[2:].min() > 15, counts
    # gap in units of the episode's E_ref-mean (each step's gap; float32 times, relative error ~1e-6)
    time0 = np.concatenate([np.zeros((num_envs, 1)), st.time[:, :-1]], axis=1)
    t = ((st.time - time0) / st.e_mean)[..., None] * np.ones(env.num_devices)
    other = pool & (np.arange(env.num_devices) > 0)
    was_on, was_off = other & before, other & ~before
    p_leave, p_back = 1 - np.exp(-churn * t), 1 - np.exp(-rejoin * t)
    edges = np.quantile(t[other], np.linspace(0, 1, 6))
    edges[-1] = np.inf
    for lo, hi in zip(edges[:-1], edges[1:]):
        b = (t >= lo) & (t < hi)
        on, off = was_on & b, was_off & b
        assert on.sum() > 500 and off.sum() > 200, (lo, on.sum(), off.sum())
        # within 4 binomial standard errors of the definition, in each gap bin
        assert abs(_z(~after[on], p_leave[on])) < 4, ("leave", lo, hi, _z(~after[on], p_leave[on]))
        assert abs(_z(after[off], p_back[off])) < 4, ("back", lo, hi, _z(after[off], p_back[off]))
    # the chain as defined: at gap t ~ Exp(mean 1 / load) per arrival its long-run availability is
    # E[q] / (E[p] + E[q]) with E[p] = churn / (churn + load), E[q] = rejoin / (rejoin + load) (0.6 here;
    # rejoin / (churn + rejoin) = 2/3 only as churn t, rejoin t -> 0, see the fixed-gap test below).
    # One sample per device at the last step (independent across environments): binomial SE.
    ep, eq = churn / (churn + load), rejoin / (rejoin + load)
    expect = eq / (ep + eq)
    last = other[:, -1]
    avail = after[:, -1][last].mean()
    se = np.sqrt(expect * (1 - expect) / last.sum())
    assert abs(avail - expect) < 4 * se, (avail, expect, se)


def test_churn_long_run_availability_at_a_fixed_gap():
    """Iterating AllocationEnv.churn at a fixed small gap t (E_ref-mean units): availability
    -> q / (p + q) with p = 1 - exp(-churn t), q = 1 - exp(-rejoin t), within 0.0011 of
    rejoin / (churn + rejoin) here (0.4 of the standard error below)."""
    churn, rejoin, t, chains, steps = 1.0, 2.0, 0.01, 4096, 400
    env, params = envs.make("alloc-any-v0", models=("alexnet",), devices_min=8, churn=churn, rejoin=rejoin)
    _, state = env.reset(jax.random.key(1), params)
    gap = t * state.e_mean

    @jax.jit
    def run(key):
        def body(present, k):
            return env.churn(k, state.replace(present=present), gap, params), None

        def chain(k):
            return jax.lax.scan(body, state.pool, jax.random.split(k, steps))[0]

        return jax.vmap(chain)(jax.random.split(key, chains))

    present = np.asarray(run(jax.random.key(2)))[:, 1:]  # (chains, 7), chains independent; start all present
    p, q = -np.expm1(-churn * t), -np.expm1(-rejoin * t)
    exact, limit = q / (p + q), rejoin / (churn + rejoin)
    assert (1 - p - q) ** steps < 1e-4  # the start (all present) is forgotten
    se = np.sqrt(limit * (1 - limit) / present.size)  # 28672 independent Bernoulli samples: SE 0.0028
    assert abs(exact - limit) < 0.5 * se
    assert abs(present.mean() - limit) < 4 * se and abs(present.mean() - exact) < 4 * se, (present.mean(), exact, se)
    # and with no churn nothing ever leaves
    quiet = params.replace(churn=jnp.zeros_like(params.churn))
    assert bool(env.churn(jax.random.key(3), state, 1e3 * state.e_mean, quiet).all())


# ----------------------------------------------------------------------------- 3. padding
def _padded_pair(observation: str, requests: int = 24):
    """The same 3-device fixed cluster in an environment of 3 devices and one of 6 (3 absent)."""
    kw = dict(cluster=CLUSTER3, slots=5, requests=requests, load=1.4, observation=observation)
    return envs.make("alloc-v0", num_devices=3, **kw), envs.make("alloc-v0", num_devices=6, **kw)


def _device_blocks(obs: np.ndarray, env) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-device columns (..., N) of each feature, and the rest of the observation (flattened)."""
    n, kind = env.num_devices, env.observation_kind
    if kind == "sets":
        g = envs.alloc.SETS_GLOBALS
        dev = obs[..., g: g + n * envs.alloc.SETS_DEVICE].reshape(obs.shape[:-1] + (n, -1))
        return [dev[..., j] for j in range(dev.shape[-1])], np.concatenate(
            [obs[..., :g], obs[..., g + n * envs.alloc.SETS_DEVICE:]], axis=-1)
    blocks = [obs[..., i * n:(i + 1) * n] for i in range(5)]
    rest = obs[..., 5 * n: 5 * n + env.num_models + 4]
    if kind == "table":
        rows = obs[..., 5 * n + env.num_models + 4:].reshape(obs.shape[:-1] + (env.slots, n + 1))
        blocks += [rows[..., j, 1:] for j in range(env.slots)]  # each reservation's shares
        rest = np.concatenate([rest, rows[..., 0]], axis=-1)
    return blocks, rest


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_absent_padding_changes_nothing(fill):
    steps = 60
    (small, sp), (big, bp) = _padded_pair("summary")
    assert np.asarray(bp.cluster_present).tolist() == [True] * 3 + [False] * 3
    acts = _actions(np.random.default_rng(2), steps, 3)
    padded = np.concatenate([acts, np.full((steps, 3), fill)], axis=1)
    keys = jax.random.split(jax.random.key(9), steps)
    _, s0 = small.reset(jax.random.key(8), sp)
    _, b0 = big.reset(jax.random.key(8), bp)
    a = jax.tree.map(np.asarray, _scan(small, sp)(s0, keys, jnp.asarray(acts, jnp.float32)))
    b = jax.tree.map(np.asarray, _scan(big, bp)(b0, keys, jnp.asarray(padded, jnp.float32)))
    # the same key gives the same draws: presence keys are folded in, so loads, models and gaps coincide
    assert float(s0.load) == float(b0.load) and int(s0.model) == int(b0.model)
    np.testing.assert_array_equal(a["model"], b["model"])
    np.testing.assert_array_equal(a["state"].model, b["state"].model)
    np.testing.assert_allclose(a["arrival"], b["arrival"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(small.reference_times(s0.cluster, s0.pool)),
                               np.asarray(big.reference_times(b0.cluster, b0.pool)), rtol=1e-6)
    assert a["trunc"].sum() == b["trunc"].sum() == steps // 24
    for k in ("latency", "wait", "exec_time", "reward", "utilization", "capacity", "e_ref", "flop"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, err_msg=k)
    np.testing.assert_array_equal(a["invalid"], b["invalid"])
    assert a["invalid"].any() and (a["wait"] > 0).mean() > 0.2  # invalid steps and queueing were exercised
    np.testing.assert_array_equal(b["state"].res_share[..., 3:], 0.0)  # ones on absent devices gave share 0
    np.testing.assert_array_equal(b["devices"], 3)
    # every observation kind of the same states: present devices' features equal, absent ones zero
    for kind in envs.alloc.OBSERVATIONS:
        ok_small = np.asarray(jax.vmap(_kind(small, kind).observation)(a["state"]))
        ok_big = np.asarray(jax.vmap(_kind(big, kind).observation)(b["state"]))
        if kind == "summary":
            np.testing.assert_allclose(ok_small, a["obs"], rtol=1e-6)  # outside the scan: other fusion
        (ds, rs), (db, rb) = _device_blocks(ok_small, _kind(small, kind)), _device_blocks(ok_big, _kind(big, kind))
        assert len(ds) == len(db) >= 5
        for j, (x, y) in enumerate(zip(ds, db)):
            np.testing.assert_allclose(y[..., :3], x, rtol=1e-6, atol=1e-7, err_msg=f"{kind} device feature {j}")
            np.testing.assert_array_equal(y[..., 3:], 0.0, err_msg=f"{kind} absent feature {j}")
        np.testing.assert_allclose(rb, rs, rtol=1e-6, atol=1e-7, err_msg=f"{kind} other features")


@functools.lru_cache(maxsize=None)
def _kind_env(n: int, slots: int, requests: int, kind: str):
    return envs.AllocationEnv(n, slots, requests=requests, observation=kind)


def _kind(env, kind):
    """``env`` (default catalogue) with another observation; the dynamics are the same."""
    return _kind_env(env.num_devices, env.slots, env.requests, kind)
