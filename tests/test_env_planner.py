"""The environment's fused planner (jaxsplit.plan_engine): E_ref is the best plan, E a real plan never
slower than the per-layer closed form, and the next episode's plans accumulated a chunk per step
equal the plans solved at once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsplit import envs, planner, zoo


@pytest.fixture(scope="module")
def fused_env():
    env, params = envs.make("alloc-v0", num_devices=3, models=("alexnet", "vgg16@64"), requests=6, planner="fused")
    return env, params


@pytest.mark.slow
def test_fused_environment(fused_env):
    env, params = fused_env
    obs, state = jax.jit(env.reset)(jax.random.key(0), params)
    # E_ref(k): the best plan of model k on the episode's cluster, share 1 on its devices
    pool = np.asarray(state.pool, np.float32)
    for k, name in enumerate(("alexnet", "vgg16@64")):
        layers = zoo.get("vgg16", (64, 64)) if name == "vgg16@64" else zoo.get(name)
        best = jax.jit(planner.Planner(layers).best_plan)(state.cluster, jnp.asarray(pool))
        assert float(state.e_ref[k]) == pytest.approx(float(best.latency), rel=1e-6)
    # the offered load is relative to the per-layer E_ref under either planner: one rho, one arrival rate
    e_layer = env.reference_times(state.cluster, state.pool)
    assert float(state.rate) == pytest.approx(float(state.load / jnp.sum(params.mix * e_layer)), rel=1e-6)
    # E under any shares: a plan never slower than the per-layer closed form
    shares = jax.random.uniform(jax.random.key(1), (16, 3), minval=0.05, maxval=1.0)
    fused = jax.jit(jax.vmap(env.request_time, in_axes=(None, 0)))(state, shares)
    layer = jax.jit(jax.vmap(env.exec_time, in_axes=(None, 0, None)))(state.cluster, shares, state.model)
    assert np.all(np.isfinite(fused)) and np.all(np.asarray(fused) <= np.asarray(layer))
    assert np.any(np.asarray(fused) < np.asarray(layer))
    # one episode of steps: the next cluster's candidates, a chunk per step, give its plans at the reset
    step = jax.jit(env.step)
    next_cluster, next_pool = state.next_cluster, state.next_pool
    for i in range(env.requests):
        obs, state, reward, _, truncated, info = step(jax.random.key(10 + i), state, jnp.ones(3) * 0.5, params)
        assert np.isfinite(float(reward))
    assert bool(truncated)
    lat = jax.jit(env.plans.latencies)(jnp.arange(env.plans.num_candidates), next_cluster,
                                       next_pool.astype(jnp.float32))
    plan, e_ref = jax.jit(env.plans.tabulate)(lat)
    np.testing.assert_array_equal(np.asarray(state.plan), np.asarray(plan))
    np.testing.assert_allclose(np.asarray(state.e_ref), np.asarray(e_ref), rtol=1e-6)


def test_fused_planner_is_refused_with_another_split_rule():
    with pytest.raises(ValueError, match="field 'planner'"):
        envs.make("alloc-v0", models=("alexnet",), planner="fused", split="equal")
    with pytest.raises(ValueError, match="field 'planner': unknown 'nope'"):
        envs.make("alloc-v0", models=("alexnet",), planner="nope")
