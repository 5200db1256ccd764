"""The JAX environment and its numpy twin agree step by step (x64, same arrivals, same actions)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest


from jaxsplit import envs
from jaxsplit.envs.twin import NumpyAllocationEnv

enable_x64 = lambda: jax.enable_x64(True)  # noqa: E731


def _actions(rng: np.random.Generator, steps: int, n: int) -> np.ndarray:
    a = rng.uniform(-0.2, 1.2, (steps, n))
    pick = rng.random((steps, n))
    a[pick < 0.1] = 0.0
    a[(pick >= 0.1) & (pick < 0.2)] = 1.0
    a[(pick >= 0.2) & (pick < 0.23)] = np.nan
    a[(pick >= 0.23) & (pick < 0.25)] = np.inf
    a[rng.random(steps) < 0.03] = 0.0  # some all-zero (invalid) actions
    return a


@pytest.mark.slow
@pytest.mark.parametrize("name,split,steps,requests,scale,observation",
                         [("alloc-v0", "closed_form", 2000, 150, "model", "summary"),
                          ("alloc-n2-v0", "equal", 600, 40, "mean", "table"),
                          ("alloc-v0", "closed_form", 600, 150, "mean", "table")])
def test_jax_env_matches_numpy_twin(name, split, steps, requests, scale, observation):
    rng = np.random.default_rng(7)
    with enable_x64():
        env, params = envs.make(name, requests=requests, split=split, slots=6, load_min=0.5, load_max=3.0,
                                reward_scale=scale, observation=observation)
        assert env.dtype == jnp.float64
        actions = _actions(rng, steps, env.num_devices)
        obs0, state0 = env.reset(jax.random.key(3), params)

        def body(state, inp):
            key, action = inp
            obs, new, reward, term, trunc, info = env.step(key, state, action, params)
            rec = dict(obs=obs, reward=reward, trunc=trunc, time=new.time, next_model=new.model,
                       flops=new.cluster.flops, bandwidth=new.cluster.bandwidth, latency_=new.cluster.latency,
                       next_load=new.load, **info)
            return new, rec

        keys = jax.random.split(jax.random.key(4), steps)
        _, recs = jax.jit(lambda s: jax.lax.scan(body, s, (keys, jnp.asarray(actions))))(state0)
        recs = jax.tree.map(np.asarray, recs)

    twin = NumpyAllocationEnv(env.num_devices, env.slots, env.models, requests=requests, split=split,
                              reward_scale=scale, observation=observation)
    tobs = twin.reset((np.asarray(state0.cluster.flops), np.asarray(state0.cluster.bandwidth),
                       np.asarray(state0.cluster.latency)), float(state0.load), int(state0.model))
    np.testing.assert_allclose(tobs, np.asarray(obs0), rtol=1e-9, atol=1e-12)
    prev_time = float(state0.time)
    waits = invalids = resets = 0
    for t in range(steps):
        trunc = bool(recs["trunc"][t])
        gap = 0.0 if trunc else recs["time"][t] - prev_time
        tobs, treward, tinfo = twin.step(actions[t], gap, int(recs["next_model"][t]))
        for k in ("latency", "wait", "exec_time", "utilization"):
            np.testing.assert_allclose(recs[k][t], tinfo[k], rtol=1e-9, atol=1e-12, err_msg=f"{k} at step {t}: {[(kk, recs[kk][t], tinfo[kk]) for kk in ('wait', 'exec_time')]} {twin.reservations}")
        assert bool(recs["invalid"][t]) == tinfo["invalid"]
        np.testing.assert_allclose(recs["reward"][t], treward, rtol=1e-9, atol=1e-12, err_msg=f"reward at {t}")
        if trunc:
            assert twin.count == requests
            tobs = twin.reset((recs["flops"][t], recs["bandwidth"][t], recs["latency_"][t]), float(recs["next_load"][t]),
                              int(recs["next_model"][t]))
            resets += 1
        np.testing.assert_allclose(recs["obs"][t], tobs, rtol=1e-9, atol=1e-12, err_msg=f"obs at step {t}")
        prev_time = recs["time"][t]
        waits += tinfo["wait"] > 0
        invalids += tinfo["invalid"]
    # the run exercised queueing, invalid actions and auto-resets
    assert waits > steps // 10 and invalids > 0 and resets == steps // requests
    if observation == "table":  # the table held several reservations at once
        held = recs["obs"][:, 5 * env.num_devices + env.num_models + 4::env.num_devices + 1] > 0
        assert held.sum(axis=1).max() >= 3
