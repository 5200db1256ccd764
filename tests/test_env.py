"""Core dynamics of the allocation environment: API, validation, invariants, queueing theory."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxsplit import envs

SMALL = dict(models=("alexnet", "resnet18"))


def rollout(env, params, key, actions):
    """Scan env.step over ``actions`` (T, N); returns stacked (obs, reward, truncated, info, states)."""
    obs, state = env.reset(key, params)

    def body(s, inp):
        k, a = inp
        o, s2, r, term, trunc, info = env.step(k, s, a, params)
        return s2, (o, r, term, trunc, info, s)

    keys = jax.random.split(jax.random.fold_in(key, 1), actions.shape[0])
    _, out = jax.lax.scan(body, state, (keys, actions))
    return out


@pytest.mark.slow
def test_table_observation_lists_the_held_reservations_longest_first():
    env, params = envs.make("alloc-v0", observation="table", **SMALL)
    n, m = env.num_devices, env.slots
    summary, _ = envs.make("alloc-v0", **SMALL)
    assert env.obs_dim == summary.obs_dim + m * (n + 1)
    obs, state = env.reset(jax.random.key(0), params)
    ends = jnp.zeros((m,)).at[3].set(2.0).at[7].set(5.0).at[9].set(-1.0)
    shares = jnp.zeros((m, n)).at[3].set(0.25).at[7].set(jnp.array([0.5, 0.0, 0.5, 1.0])).at[9].set(0.3)
    state = state.replace(res_end=ends * state.e_mean, res_share=shares, last_start=0.5 * state.e_mean)
    obs = env.observation(state)
    np.testing.assert_allclose(np.asarray(obs[:summary.obs_dim]), np.asarray(summary.observation(state)), rtol=1e-6)
    rows = np.asarray(obs[summary.obs_dim:]).reshape(m, n + 1)
    np.testing.assert_allclose(rows[0], [np.log1p(4.5), 0.5, 0.0, 0.5, 1.0], rtol=1e-5)  # ends last
    np.testing.assert_allclose(rows[1], [np.log1p(1.5), 0.25, 0.25, 0.25, 0.25], rtol=1e-5)
    assert (rows[2:] == 0).all()  # released (slot 9) and free slots are zero rows
    lo, hi = env.observation_bounds()
    assert lo.shape == hi.shape == (env.obs_dim,)
    with pytest.raises(ValueError, match="observation"):
        envs.make("alloc-v0", observation="full")


@pytest.mark.slow
def test_registered_names_jit_and_step():
    assert {"alloc-v0", "alloc-n8-v0"} <= set(envs.registered())
    for name in envs.registered():
        env, params = envs.make(name, requests=3, models=("alexnet",))
        env = getattr(env, "unwrapped", env)  # alloc-main-v0 acts through its wrapper; step its shares here
        assert isinstance(env.obs_dim, int) and isinstance(env.num_devices, int)
        acts = jnp.full((4, env.num_devices), 0.5)
        obs, r, term, trunc, info, states = jax.jit(lambda k: rollout(env, params, k, acts))(jax.random.key(0))
        assert obs.shape == (4, env.obs_dim) and obs.dtype == jnp.float32
        assert np.all(np.isfinite(obs)) and np.all(np.isfinite(r))
        np.testing.assert_array_equal(trunc, [False, False, True, False])
        assert not term.any()
        for k in ("latency", "wait", "exec_time", "utilization", "model", "invalid"):
            assert info[k].shape == (4,)
        assert info["final_observation"].shape == (4, env.obs_dim)


def test_n8_defaults_and_static_settings():
    env, params = envs.make("alloc-n8-v0")
    assert env.num_devices == 8 and env.models == envs.DEFAULT_MODELS
    assert env.obs_dim == 5 * 8 + 4 + 4
    assert float(params.load_min) == pytest.approx(0.2) and float(params.load_max) == pytest.approx(1.5)
    # device 0 is the local coordinator; the others within the ranges
    c = env.sample_cluster(jax.random.key(0), params)
    assert np.isinf(c.bandwidth[0]) and c.latency[0] == 0
    assert np.all((c.flops >= 5e9 * 0.999) & (c.flops <= 100e9 * 1.001))
    assert np.all((c.bandwidth[1:] >= 12.5e6 * 0.999) & (c.bandwidth[1:] <= 250e6 * 1.001))


def test_fixed_cluster_and_catalogue():
    cluster = ([2e10, 5e10, 3e10], [np.inf, 1.25e8, 6e7], [0.0, 2e-3, 1e-3])
    env, params = envs.make("alloc-v0", cluster=cluster, models=("vgg16", "resnet18"), load=0.7)
    assert env.num_devices == 3 and env.num_models == 2
    _, state = jax.jit(env.reset)(jax.random.key(5), params)
    np.testing.assert_allclose(state.cluster.flops, cluster[0], rtol=1e-6)
    assert float(state.load) == pytest.approx(0.7)
    # E_ref is the request latency alone on the whole cluster; rate = rho / mean E_ref
    exec_time = jax.jit(env.exec_time)
    e = [float(exec_time(state.cluster, jnp.ones(3), k)) for k in range(2)]
    np.testing.assert_allclose(state.e_ref, e, rtol=1e-5)
    assert float(state.rate) == pytest.approx(0.7 / np.mean(e), rel=1e-5)


@pytest.mark.slow
def test_next_episode_reference_accumulates_exactly():
    env, params = envs.make("alloc-v0", requests=5, **SMALL)
    assert env.ref_chunk * env.requests >= env.num_flat
    acts = jnp.full((6, env.num_devices), 0.7)
    obs, r, term, trunc, info, states = rollout(env, params, jax.random.key(2), acts)
    assert bool(trunc[4]) and not bool(trunc[:4].any())
    after = jax.tree.map(lambda a: a[5], states)  # the state after the auto-reset
    np.testing.assert_allclose(after.e_ref, jax.jit(env.reference_times)(after.cluster), rtol=1e-5)
    np.testing.assert_allclose(after.cluster.flops, states.next_cluster.flops[4])
    np.testing.assert_allclose(info["final_observation"][3], obs[3])  # no reset: same obs
    assert not np.allclose(info["final_observation"][4], obs[4])


def test_split_rule_can_be_swapped():
    cluster = ([2e10, 5e10, 3e10, 1e10], [np.inf, 1.25e8, 6e7, 2e8], [0.0, 2e-3, 1e-3, 5e-4])
    env_cf, p = envs.make("alloc-v0", cluster=cluster, **SMALL)
    env_eq, _ = envs.make("alloc-v0", cluster=cluster, split="equal", **SMALL)
    c = env_cf.sample_cluster(jax.random.key(0), p)
    share = jnp.array([1.0, 0.5, 0.8, 0.3])
    for k in range(2):
        assert float(jax.jit(env_cf.exec_time)(c, share, k)) < float(jax.jit(env_eq.exec_time)(c, share, k))
    with pytest.raises(ValueError, match="split"):
        envs.make("alloc-v0", split="exact-ish")
    with pytest.raises(ValueError, match="reward_scale"):
        envs.make("alloc-v0", reward_scale="seconds")


@pytest.mark.slow
def test_reward_scale_mean_divides_by_the_episode_mean_reference():
    """reward_scale="mean": -latency / E_ref-mean (+ utilisation), the same for every model of an
    episode; "model": -latency / E_ref(model) (MODEL.md). Same dynamics otherwise."""
    env_m, params = envs.make("alloc-v0", **SMALL)
    env_e, _ = envs.make("alloc-v0", reward_scale="mean", **SMALL)
    _, state = jax.jit(env_m.reset)(jax.random.key(1), params)
    action = jnp.full((env_m.num_devices,), 0.5)
    _, _, r_m, _, _, info_m = jax.jit(env_m.step)(jax.random.key(2), state, action, params)
    _, _, r_e, _, _, info_e = jax.jit(env_e.step)(jax.random.key(2), state, action, params)
    assert float(info_m["latency"]) == float(info_e["latency"]) > 0
    bonus = float(params.util_weight) * float(info_m["utilization"])
    assert float(r_m) == pytest.approx(-float(info_m["latency"]) / float(info_m["e_ref"]) + bonus, rel=1e-5)
    assert float(r_e) == pytest.approx(-float(info_e["latency"]) / float(state.e_mean) + bonus, rel=1e-5)
    assert float(state.e_ref[state.model]) != pytest.approx(float(state.e_mean), rel=1e-3)


@pytest.mark.slow
def test_actions_clipped_nan_counts_as_zero_and_invalid_penalised():
    env, params = envs.make("alloc-v0", **SMALL)
    a, inv = env.clean_action(jnp.array([jnp.nan, 2.0, -1.0, 0.01]), params)
    np.testing.assert_array_equal(a, [0.0, 1.0, 0.0, 0.0])
    assert not bool(inv)
    a, inv = env.clean_action(jnp.array([jnp.nan, jnp.inf, -jnp.inf, 0.0]), params)
    assert bool(inv) and float(a[0]) == pytest.approx(0.05) and float(a[1:].sum()) == 0
    # a share of exactly min_share is kept ("below it become 0"), on a device other than the fallback's
    a, inv = env.clean_action(jnp.zeros(4).at[2].set(params.min_share), params)
    assert not bool(inv) and float(a[2]) == float(params.min_share) and float(a[0]) == 0.0
    _, state = jax.jit(env.reset)(jax.random.key(0), params)
    step = jax.jit(env.step)
    _, _, r_bad, _, _, info = step(jax.random.key(1), state, jnp.full(4, jnp.nan), params)
    assert bool(info["invalid"]) and np.isfinite(r_bad)
    p0 = params.replace(invalid_penalty=jnp.float32(0.0))
    _, _, r_free, _, _, _ = step(jax.random.key(1), state, jnp.full(4, jnp.nan), p0)
    assert float(r_free) - float(r_bad) == pytest.approx(1.0, rel=1e-5)


def test_allocate_reports_and_records_the_cleaned_share():
    env, params = envs.make("alloc-v0", **SMALL)
    _, state = jax.jit(env.reset)(jax.random.key(0), params)
    action = jnp.array([0.3, jnp.nan, 0.01, 2.0])
    served, out = jax.jit(env.allocate)(state, action, params)
    share, invalid = env.clean_action(action, params, state.present)
    np.testing.assert_array_equal(out["share"], share)
    assert bool(out["invalid"]) == bool(invalid)
    slot = int(jnp.argmin(state.res_end))
    np.testing.assert_array_equal(served.res_share[slot], share)
    assert float(served.res_end[slot]) == pytest.approx(float(out["latency"]), rel=1e-6)


def test_step_info_describes_the_request_it_served():
    env, params = envs.make("alloc-v0", load_min=0.4, load_max=1.2, devices_min=2, **SMALL)
    _, state = jax.jit(env.reset)(jax.random.key(3), params)
    _, _, reward, _, _, info = jax.jit(env.step)(jax.random.key(4), state, jnp.full(4, 0.5), params)
    _, out = env.allocate(state, jnp.full(4, 0.5), params)
    assert int(info["model"]) == int(state.model) and float(info["arrival"]) == float(state.time)
    assert float(info["load"]) == float(state.load) and 0.4 <= float(info["load"]) <= 1.2
    assert float(info["group"]) == pytest.approx((float(state.load) - 0.4) / 0.8, rel=1e-5)
    assert float(info["e_ref"]) == float(state.e_ref[state.model])
    assert int(info["devices"]) == int(state.present.sum())
    assert float(info["capacity"]) == pytest.approx(float(jnp.sum(state.cluster.flops * state.present)), rel=1e-6)
    for name in ("latency", "wait", "exec_time", "utilization", "invalid", "flop"):
        assert float(info[name]) == pytest.approx(float(out[name]), rel=1e-6), name
    assert float(reward) == pytest.approx(float(out["reward"]), rel=1e-6)


@pytest.mark.parametrize("bad,field", [
    (dict(load_min=2.0, load_max=1.0), "load_min"), (dict(load=0.0), "load_min"), (dict(load=-1.0), "load_min"),
    (dict(flops_min=0.0), "flops_min"), (dict(flops_min=2e11), "flops_min"),
    (dict(bandwidth_max=-5.0), "bandwidth_max"), (dict(latency_min=-1e-3), "latency_min"),
    (dict(latency_min=1.0, latency_max=0.1), "latency_min"), (dict(slots=0), "slots"),
    (dict(requests=0), "requests"), (dict(num_devices=0), "num_devices"), (dict(models=("vgg17",)), "models"),
    (dict(models=()), "models"), (dict(mix=[1.0, -1.0, 0.0, 0.0]), "mix"), (dict(min_share=1.5), "min_share"),
    (dict(cluster=([1e10, -1.0], [np.inf, 1e8], [0.0, 1e-3])), "cluster.flops"),
    (dict(cluster=([1e10, 1e10], [np.inf, 0.0], [0.0, 1e-3])), "cluster.bandwidth"),
    (dict(cluster=([1e10, 1e10], [np.inf, 1e8], [0.0, np.nan])), "cluster.latency"),
    (dict(util_weight=np.nan), "util_weight"), (dict(warp=1.0), "warp"),
])
def test_invalid_params_raise_naming_the_field(bad, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        envs.make("alloc-v0", **bad)
    with pytest.raises(ValueError, match="name"):
        envs.make("alloc-v9")


@pytest.mark.slow
def test_no_recompilation_and_params_batch():
    env, params = envs.make("alloc-v0", **SMALL)

    def step_fn(key, state, action, params):
        return env.step(key, state, action, params)

    step = jax.jit(chex.assert_max_traces(step_fn, n=1))

    _, state = env.reset(jax.random.key(0), params)
    for t in range(3):
        p = params.replace(util_weight=jnp.float32(0.1 * t), load_min=jnp.float32(0.3 + t), load_max=jnp.float32(2 + t))
        _, state, *_ = step(jax.random.key(t), state, jnp.full(4, 0.5), p)
    # different params in one vmap
    many = jax.tree.map(lambda *x: jnp.stack(x), *[params.replace(load_min=jnp.float32(l), load_max=jnp.float32(l))
                                                    for l in (0.3, 0.9, 1.2)])
    obs, states = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(1), 3), many)
    np.testing.assert_allclose(states.load, [0.3, 0.9, 1.2], rtol=1e-6)
    assert obs.shape == (3, env.obs_dim)


action_values = st.one_of(st.sampled_from([0.0, 1.0, float("nan"), 0.04, 0.05]),
                          st.floats(0.0, 1.0, allow_nan=False, width=32))
_INV = envs.make("alloc-v0", num_devices=3, slots=3, requests=1000, load_min=0.5, load_max=4.0, **SMALL)
_INV_ROLL = jax.jit(lambda key, acts: rollout(*_INV, key, acts))


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), values=st.lists(action_values, min_size=60 * 3, max_size=60 * 3))
def test_invariants_property(seed, values):
    env, params = _INV
    acts = jnp.asarray(np.array(values, np.float32).reshape(60, 3))
    obs, r, term, trunc, info, states = jax.tree.map(np.asarray, _INV_ROLL(jax.random.key(seed), acts))
    shares = np.asarray(jax.vmap(lambda a: env.clean_action(a, params)[0])(acts), np.float64)
    arrival = info["arrival"].astype(np.float64)
    start = arrival + info["wait"]
    end = start + info["exec_time"]
    assert np.all(info["exec_time"] > 0) and np.all(info["latency"] >= info["exec_time"])
    assert np.all(info["wait"] >= 0) and np.all(np.diff(arrival) >= 0)
    assert np.all(np.diff(start) >= -1e-6 * np.maximum(start[1:], 1))  # start in arrival order
    assert np.all((info["utilization"] >= 0) & (info["utilization"] <= 1))
    for t in range(len(start)):  # shares in use at every start time never exceed 1; at most M held
        live = (start <= start[t]) & (end > start[t] + 1e-6 * max(start[t], 1.0))
        assert np.all(shares[live].sum(axis=0) <= 1 + 1e-4)
        assert live.sum() <= env.slots
    assert np.all(np.isfinite(obs)) and np.all(np.isfinite(r)) and np.all((obs >= 0) & (obs <= 10))
    assert not trunc.any()


@pytest.mark.slow
def test_no_nan_over_a_million_steps():
    env, params = envs.make("alloc-n2-v0", models=("alexnet",), requests=64, load_min=0.05, load_max=5.0)
    b, t = 4096, 250

    @jax.jit
    def run(key):
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, b), params)

        def body(carry, k):
            state, bad, steps = carry
            ka, kb, ks = jax.random.split(k, 3)
            a = jax.random.uniform(ka, (b, 2))
            a = jnp.where(jax.random.uniform(kb, (b, 2)) < 0.1, jnp.nan, a)
            a = jnp.where(jax.random.uniform(kb, (b, 2)) > 0.9, 1.0, a)
            o, state, r, term, trunc, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(ks, b), state, a, params)
            finite = jnp.isfinite(o).all() & jnp.isfinite(r).all() & jnp.isfinite(info["latency"]).all()
            return (state, bad + (~finite), steps + b), None

        (_, bad, steps), _ = jax.lax.scan(body, (state, 0, 0), jax.random.split(key, t))
        return bad, steps

    bad, steps = run(jax.random.key(0))
    assert int(steps) >= 1_000_000 and int(bad) == 0


_PK_CLUSTER = ([2e10, 5e10, 3e10], [np.inf, 1.25e8, 6e7], [0.0, 2e-3, 1e-3])
_PK_ENV = envs.make("alloc-v0", cluster=_PK_CLUSTER, requests=2000, models=("vgg16", "resnet18", "alexnet"),
                    mix=[0.2, 0.5, 0.3])
_PK_RUN = jax.jit(jax.vmap(lambda k, p: rollout(_PK_ENV[0], p, k, jnp.ones((1999, 3)))[4], in_axes=(0, None)))


@pytest.mark.slow
@pytest.mark.parametrize("load", [0.3, 0.6, 0.85])
def test_whole_cluster_is_mg1_pollaczek_khinchine(load):
    """Whole-cluster requests run alone: an M/G/1 queue, mean latency = E[S] + lambda E[S^2] / (2 (1 - rho))."""
    env, params = _PK_ENV
    params = params.replace(load_min=jnp.float32(load), load_max=jnp.float32(load))
    warm, b = 200, 32
    keys = jax.random.split(jax.random.key(int(load * 100)), b)
    info = _PK_RUN(keys, params)
    lat = np.asarray(info["latency"], np.float64)[:, warm:]
    _, state = jax.jit(env.reset)(keys[0], params)
    s = np.asarray(state.e_ref, np.float64)
    p = np.array([0.2, 0.5, 0.3])
    lam = float(state.rate)
    assert lam * (p @ s) == pytest.approx(load, rel=1e-5)
    pk = p @ s + lam * (p @ s ** 2) / (2 * (1 - load))
    per_env = lat.mean(axis=1)
    se = per_env.std(ddof=1) / np.sqrt(b)
    assert abs(per_env.mean() - pk) < 4 * se + 0.002 * pk, (per_env.mean(), pk, se)
    assert np.all(np.asarray(info["utilization"]) <= 1)
