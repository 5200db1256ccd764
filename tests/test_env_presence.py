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

# random shares with exact 0 and 1, NaN, inf and some all-zero rows: the twin test's
from test_env_twin import _actions  # noqa: E402

#: a fixed cluster of three devices (coordinator first), padded in the larger environments
CLUSTER3 = ([2e10, 5e9, 3e10], [np.inf, 5e7, 2e7], [0.0, 1e-3, 2e-3])
CLUSTER4 = ([2e10, 5e9, 3e10, 1e10], [np.inf, 5e7, 2e7, 1e8], [0.0, 1e-3, 2e-3, 0.5e-3])


def _run_fn(env):
    """run(params, state0, keys, actions) -> per-step records (params traced). The new state is kept
    whole so that any observation kind can be computed from it afterwards (obs ==
    env.observation(new), auto-reset included)."""

    def run(params, state, keys, acts):
        def body(state, inp):
            key, action = inp
            obs, new, reward, _, trunc, info = env.step(key, state, action, params)
            return new, dict(obs=obs, state=new, reward=reward, trunc=trunc, **info)

        return jax.lax.scan(body, state, (keys, acts))[1]

    return run


@functools.lru_cache(maxsize=None)
def _scan(env):
    """jit(_run_fn(env)), compiled once per environment and reused."""
    run = _run_fn(env)
    run.__name__ = f"run_{id(env)}"  # chex counts traces per name and definition place: one count per env
    return jax.jit(chex.assert_max_traces(run, n=1))


@functools.lru_cache(maxsize=None)
def _observe(env):
    """jit(vmap(env.observation)), once per environment."""
    return jax.jit(jax.vmap(env.observation))


# ----------------------------------------------------------------------------- 1. the numpy twin
@pytest.mark.slow
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
        recs = _scan(env)(params, state0, jax.random.split(jax.random.key(6), steps), jnp.asarray(actions))
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


# total rates c + r above and below 1 per E_ref-mean: (1 - e^{-(c+r)t}) / (c + r) divides by c + r
@pytest.mark.slow
@pytest.mark.parametrize("churn, rejoin", [(0.5, 1.0), (0.2, 0.4)])
def test_churn_leave_and_return_follow_their_definition(churn, rejoin):
    load, num_envs, steps = 1.0, 256, 48
    env, params = envs.make("alloc-any-v0", requests=10_000, slots=4, models=("alexnet",), load=load, churn=churn,
                            rejoin=rejoin)
    keys = jax.random.split(jax.random.key(0), num_envs)
    _, state0 = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    run = jax.jit(jax.vmap(_run_fn(env), in_axes=(None, 0, 0, 0)))
    recs = run(params, state0, jax.vmap(lambda k: jax.random.split(k, steps))(keys),
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
    moved = -np.expm1(-(churn + rejoin) * t) / (churn + rejoin)
    p_leave, p_back = churn * moved, rejoin * moved
    edges = np.quantile(t[other], np.linspace(0, 1, 6))
    edges[-1] = np.inf
    for lo, hi in zip(edges[:-1], edges[1:]):
        b = (t >= lo) & (t < hi)
        on, off = was_on & b, was_off & b
        assert on.sum() > 500 and off.sum() > 200, (lo, on.sum(), off.sum())
        # within 4 binomial standard errors of the definition, in each gap bin
        assert abs(_z(~after[on], p_leave[on])) < 4, ("leave", lo, hi, _z(~after[on], p_leave[on]))
        assert abs(_z(after[off], p_back[off])) < 4, ("back", lo, hi, _z(after[off], p_back[off]))
    # the chain sampled at the arrivals of a continuous-time chain: present a fraction
    # rejoin / (churn + rejoin) of the time (2/3 here), whatever the gaps.
    # One sample per device at the last step (independent across environments): binomial SE.
    expect = rejoin / (churn + rejoin)
    last = other[:, -1]
    avail = after[:, -1][last].mean()
    se = np.sqrt(expect * (1 - expect) / last.sum())
    assert abs(avail - expect) < 4 * se, (avail, expect, se)


@pytest.mark.slow
def test_churn_long_run_availability_at_a_fixed_gap():
    """Iterating AllocationEnv.churn at a fixed gap t (E_ref-mean units), large enough that a
    per-step rule 1 - exp(-rate t) would settle elsewhere: availability -> rejoin / (churn + rejoin)."""
    churn, rejoin, t, chains, steps = 1.0, 2.0, 0.3, 4096, 400
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
    limit = rejoin / (churn + rejoin)
    naive = -np.expm1(-rejoin * t) / (-np.expm1(-churn * t) - np.expm1(-rejoin * t))  # the per-step rule's
    se = np.sqrt(limit * (1 - limit) / present.size)  # 28672 independent Bernoulli samples: SE 0.0028
    assert abs(naive - limit) > 8 * se  # the test tells the two rules apart
    assert abs(present.mean() - limit) < 4 * se, (present.mean(), limit, se)
    # and with no churn nothing ever leaves
    quiet = params.replace(churn=jnp.zeros_like(params.churn))
    assert bool(env.churn(jax.random.key(3), state, 1e3 * state.e_mean, quiet).all())


# ----------------------------------------------------------------------------- 3. padding
@functools.lru_cache(maxsize=None)
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


@pytest.mark.slow
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
    a = jax.tree.map(np.asarray, _scan(small)(sp, s0, keys, jnp.asarray(acts, jnp.float32)))
    b = jax.tree.map(np.asarray, _scan(big)(bp, b0, keys, jnp.asarray(padded, jnp.float32)))
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
        ok_small = np.asarray(_observe(_kind(small, kind))(a["state"]))
        ok_big = np.asarray(_observe(_kind(big, kind))(b["state"]))
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


# ----------------------------------------------------------------------------- 4. no NaN
def _finite(tree, where: str) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        leaf = np.asarray(leaf)
        if np.issubdtype(leaf.dtype, np.inexact):
            assert np.all(np.isfinite(leaf)), f"{where}: {jax.tree_util.keystr(path)} not finite"


@functools.lru_cache(maxsize=None)
def _lone(n: int = 8, observation: str = "sets", models: tuple = envs.DEFAULT_MODELS, requests: int = 50):
    """An environment with its two lone-coordinator settings: one device per episode, and every device
    but the coordinator gone at the first arrival (churn at its bound, no return)."""
    env, one = envs.make("alloc-any-v0", num_devices=n, observation=observation, models=models, requests=requests,
                         slots=4, devices_min=1, devices_max=1)
    gone = env.default_params(devices_min=n, devices_max=n, churn=1e6, rejoin=0.0)
    return env, {"one": one, "gone": gone}


@pytest.mark.slow
def test_no_nan_with_the_coordinator_alone():
    steps = 200
    env, settings = _lone()
    rng = np.random.default_rng(4)
    acts = {"random": _actions(rng, steps, 8), "ones": np.ones((steps, 8)), "zeros": np.zeros((steps, 8))}
    net = SetActorCritic(num_devices=8, layout=env.layout, per_item="devices", levels=4, hidden=(16, 16))
    pairs = SetActorCritic(num_devices=1, layout=env.layout, levels=14, hidden=(16, 16))
    beta = SetActorCritic(num_devices=8, layout=env.layout, per_item="devices", hidden=(16, 16))
    # jitted once each, reused over the six runs
    nets = [(jax.jit(m.apply), m.init(jax.random.key(i), jnp.zeros((env.obs_dim,))))
            for i, m in enumerate((net, pairs, beta))]
    for name, params in settings.items():
        for kind, a in acts.items():
            where = f"{name}/{kind}"
            _, s0 = env.reset(jax.random.key(1), params)
            recs = jax.tree.map(np.asarray, _scan(env)(params, s0, jax.random.split(jax.random.key(2), steps),
                                                       jnp.asarray(a, jnp.float32)))
            # observation, final observation, reward, every info entry and the state's times and shares
            # (its cluster aside: the coordinator's bandwidth is inf, local)
            _finite({k: v for k, v in recs.items() if k != "state"}, where)
            _finite(recs["state"].replace(cluster=None, next_cluster=None), f"{where} state")
            alone = recs["devices"] == 1
            assert alone.mean() > (0.99 if name == "one" else 0.9), (where, alone.mean())
            if kind == "zeros":
                assert recs["invalid"].all()
            for other in ("summary", "table"):
                _finite(_observe(_kind(env, other))(recs["state"]), f"{where} {other}")
            for apply, p in nets:
                _finite(apply(p, jnp.asarray(recs["obs"])), f"{where} network")


@pytest.mark.slow
def test_every_baseline_runs_with_absent_devices():
    steps = 30
    env, settings = _lone(3, "summary", ("alexnet", "mobilenet_v2"), 20)
    names = policies.registered()
    fns = [policies.get(name, env) for name in names]

    @jax.jit
    def run(index, params, key):
        _, state = env.reset(key, params)

        def body(carry, k):
            obs, state = carry
            k_act, k_step = jax.random.split(k)
            action = jax.lax.switch(index, [lambda *a, f=f: f(*a).astype(jnp.float32) for f in fns],
                                    k_act, obs, state, params)
            obs, state, reward, _, _, info = env.step(k_step, state, action, params)
            return (obs, state), dict(latency=info["latency"], reward=reward, obs=obs, devices=info["devices"])

        return jax.lax.scan(body, (env.observation(state), state), jax.random.split(key, steps))[1]

    for name, params in settings.items():
        for i, policy in enumerate(names):
            recs = jax.tree.map(np.asarray, run(i, params, jax.random.key(3)))
            _finite(recs, f"{policy} ({name})")
            assert np.all(recs["latency"] > 0) and (recs["devices"] == 1).mean() > 0.9, policy


# ----------------------------------------------------------------------------- 5. the set network
SMALL = dict(total_timesteps=256, num_envs=8, num_steps=8, num_minibatches=2, update_epochs=1, hidden=(16, 16))


@functools.lru_cache(maxsize=None)
def _trained(action: str):
    """A Trainer on alloc-any-v0 and its runner after two small updates (normalisation statistics
    that are not the identity)."""
    env, params = envs.EnvSpec(env="alloc-any-v0", action=action, requests=16).make()
    trainer = Trainer(PPOConfig(**SMALL), env, params)
    hp = trainer.default_hparams()
    runner = trainer.init(jax.random.PRNGKey(0), hp)
    runner, _ = jax.jit(trainer.run, static_argnums=2)(runner, hp, 2)
    return trainer, runner


def _permute(obs: np.ndarray, layout, name: str, perm: np.ndarray) -> np.ndarray:
    """``obs`` (B, D) with the items of set ``name`` reordered by ``perm``."""
    glob, sets = layout.split(obs)
    sets = dict(sets, **{name: sets[name][:, perm]})
    return np.concatenate([glob] + [np.asarray(sets[n]).reshape(obs.shape[0], -1) for n, _, _ in layout.sets], axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("action", ["clip_pairs", "per_device"])
def test_trainer_network_is_invariant_to_the_order_of_items(action):
    trainer, runner = _trained(action)
    layout, stats = trainer.layout, runner.obs_stats
    assert layout is not None and layout.items("devices") == 8
    assert float(jnp.abs(stats.mean).max()) > 0.05 and float(jnp.abs(stats.var - 1).max()) > 0.05  # not trivial
    obs = np.asarray(runner.obs)
    on = layout.split(obs)[1]["devices"][..., 0]
    assert (on.sum(1) < 8).any() and (on.sum(1) > 2).any()  # absent items among the observations

    @jax.jit
    def forward(raw):
        (logits,), value = trainer.network.apply(runner.params, stats.normalize(raw))
        return logits, value

    logits, value = forward(obs)
    rng = np.random.default_rng(0)
    for name in ("devices", "slots"):
        perm = rng.permutation(layout.items(name))
        assert not np.array_equal(perm, np.arange(perm.size))
        p_logits, p_value = forward(_permute(obs, layout, name, perm))
        np.testing.assert_allclose(p_value, value, atol=1e-5, err_msg=name)
        if action == "per_device" and name == "devices":
            assert logits.shape == (8, 8, 5)
            np.testing.assert_allclose(p_logits, np.asarray(logits)[:, perm], atol=1e-5)
        else:
            np.testing.assert_allclose(p_logits, logits, atol=1e-5, err_msg=name)
    # and the permuted logits differ from the unpermuted ones where the devices differ (the test can fail)
    if action == "per_device":
        assert np.abs(np.asarray(logits)[:, 1:] - np.asarray(logits)[:, :1]).max() > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("action", ["clip_pairs", "per_device"])
def test_trainer_network_does_not_depend_on_padding(action):
    trainer, runner = _trained(action)
    steps = 6
    env4, p4 = envs.make("alloc-any-v0", num_devices=4, devices_max=4, cluster=CLUSTER4, requests=16, churn=0.0,
                         load=1.5)
    env8, p8 = envs.make("alloc-any-v0", cluster=CLUSTER4, requests=16, churn=0.0, load=1.5)
    assert env8.num_devices == 8 and np.asarray(p8.cluster_present).sum() == 4
    acts = np.random.default_rng(1).uniform(0, 1, (steps, 4))
    keys = jax.random.split(jax.random.key(5), steps)
    obs = []
    for env, params, a in ((env4, p4, acts), (env8, p8, np.concatenate([acts, np.ones((steps, 4))], 1))):
        _, s0 = env.reset(jax.random.key(4), params)
        obs.append(np.asarray(_scan(env)(params, s0, keys, jnp.asarray(a, jnp.float32))["obs"]))
    obs4, obs8 = obs
    assert (obs8[:, env8.layout.globals + 8 * 9:] > 0).any()  # reservations held: slot items exercised
    # the N=4 network: the same module and parameters over the 4-device layout; its statistics are the
    # (tied) N=8 ones with 4 device items
    net4 = trainer.network.clone(layout=env4.layout, num_devices=trainer.network.num_devices if action == "clip_pairs" else 4)
    g, d = env8.layout.globals, 9
    cut = lambda v: jnp.concatenate([v[:g + 4 * d], v[g + 8 * d:]])  # noqa: E731
    stats4 = runner.obs_stats.replace(mean=cut(runner.obs_stats.mean), var=cut(runner.obs_stats.var))
    (l8,), v8 = trainer.network.apply(runner.params, runner.obs_stats.normalize(obs8))
    (l4,), v4 = net4.apply(runner.params, stats4.normalize(obs4))
    np.testing.assert_allclose(v4, v8, atol=1e-5)
    if action == "clip_pairs":
        np.testing.assert_allclose(l4, l8, atol=1e-5)
    else:  # per device: the present devices' logits alike, the absent ones pinned to share 0
        np.testing.assert_allclose(l4, l8[:, :4], atol=1e-5)
        assert np.all(np.argmax(l8[:, 4:], -1) == 0)


# ----------------------------------------------------------------------------- 6. bad input
@pytest.mark.parametrize("overrides, field", [
    (dict(devices_min=0), "devices_min"), (dict(devices_max=9), "devices_max"), (dict(devices_min=2.5), "devices_min"),
    (dict(devices_max=np.nan), "devices_max"), (dict(devices_min=True), "devices_min"),
    (dict(devices_min=5, devices_max=3), "devices_min"), (dict(churn=-1.0), "churn"), (dict(churn=np.inf), "churn"),
    (dict(rejoin=-0.5), "rejoin"), (dict(rejoin=np.inf), "rejoin"), (dict(rejoin=np.nan), "rejoin"),
    (dict(cluster=tuple(c * 3 for c in CLUSTER3)), "cluster")])
def test_bad_presence_settings_name_their_field(overrides, field):
    with pytest.raises(ValueError, match=rf"^field '{field}'") as err:
        envs.make("alloc-any-v0", **overrides)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("devices", ["0,3", "3,2", "a", "2.5", "1,2,3"])
def test_bad_devices_option_names_it(devices):
    with pytest.raises(ValueError, match=r"^field 'devices'") as err:
        envs.EnvSpec(env="alloc-any-v0", devices=devices).make()
    assert "\n" not in str(err.value)


def test_devices_above_the_environments_count_name_the_bound():
    with pytest.raises(ValueError, match=r"^field 'devices_max': must be an integer in \[1, 8\]"):
        envs.EnvSpec(env="alloc-any-v0", devices="2,9").make()
    with pytest.raises(ValueError, match=r"^field 'cluster': 3 devices, more than the environment's 2"):
        envs.make("alloc-v0", num_devices=2, cluster=CLUSTER3)
