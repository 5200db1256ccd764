"""The PPO core on a tiny environment with the allocation environment's API."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxsplit.agents.distributions import (beta_entropy, beta_log_prob, beta_mean, beta_sample, categorical_entropy,
                                           categorical_log_prob, categorical_mode, categorical_sample)
from jaxsplit.agents.ppo import (METRICS, HyperParams, PPOConfig, RunningStats, Trainer, clip_pairs, gae, make_train,
                                 share_grid, snap_shares)
from tiny_env import TinyEnv

SMALL = dict(num_envs=16, num_steps=32, num_minibatches=4, lr=3e-3)


def test_beta_log_prob_and_entropy_match_scipy():
    rng = np.random.default_rng(0)
    a = rng.uniform(1.0, 8.0, (20, 3)).astype(np.float32)
    b = rng.uniform(1.0, 8.0, (20, 3)).astype(np.float32)
    x = rng.uniform(0.01, 0.99, (20, 3)).astype(np.float32)
    lp = np.asarray(beta_log_prob(jnp.asarray(x), jnp.asarray(a), jnp.asarray(b)))
    np.testing.assert_allclose(lp, stats.beta.logpdf(x, a, b).sum(-1), rtol=1e-4, atol=1e-4)
    ent = np.asarray(beta_entropy(jnp.asarray(a), jnp.asarray(b)))
    np.testing.assert_allclose(ent, stats.beta.entropy(a, b).sum(-1), rtol=1e-4, atol=1e-4)


def test_beta_samples_are_finite_inside_the_unit_interval_with_the_right_mean():
    a, b = jnp.full((20000, 2), 1.0), jnp.array([[1.0, 400.0]] * 20000)
    x = beta_sample(jax.random.key(1), a, b)
    assert bool(jnp.all((x > 0) & (x < 1)))
    assert bool(jnp.all(jnp.isfinite(beta_log_prob(x, a, b))))
    np.testing.assert_allclose(np.asarray(x.mean(0)), np.asarray(beta_mean(a[0], b[0])), rtol=0.05)


def _gae_reference(r, v, nv, term, trunc, gamma, lam):
    adv = np.zeros_like(r)
    last = np.zeros_like(r[0])
    for t in reversed(range(len(r))):
        delta = r[t] + gamma * nv[t] * (1 - term[t]) - v[t]
        last = delta + gamma * lam * (1 - np.maximum(term[t], trunc[t])) * last
        adv[t] = last
    return adv


def test_gae_bootstraps_truncation_and_cuts_termination():
    rng = np.random.default_rng(2)
    T, B = 12, 5
    r, v, nv = (rng.normal(size=(T, B)).astype(np.float32) for _ in range(3))
    term = rng.random((T, B)) < 0.1
    trunc = (rng.random((T, B)) < 0.2) & ~term
    adv, target = gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(nv), jnp.asarray(term), jnp.asarray(trunc),
                      0.9, 0.8)
    ref = _gae_reference(r, v, nv, term.astype(np.float32), trunc.astype(np.float32), 0.9, 0.8)
    np.testing.assert_allclose(np.asarray(adv), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(target), ref + v, rtol=1e-5, atol=1e-5)
    # a truncated step keeps its bootstrap and cuts the trace: A = r + gamma * V(final obs) - V
    for t, b in np.argwhere(trunc):
        assert abs(float(adv[t, b]) - (r[t, b] + 0.9 * nv[t, b] - v[t, b])) < 1e-4


@pytest.mark.parametrize("field,value", [("num_envs", 0), ("num_minibatches", 7), ("total_timesteps", 10),
                                         ("lr", -1.0), ("gamma", 1.5), ("clip_eps", 0.0), ("hidden", ()),
                                         ("load_min", 0.0), ("share_levels", -1),
                                         ("reward_groups", 0), ("init_concentration", 1.0),
                                         ("init_mean", 1.0), ("action", "each"), ("distribution", "normal")])
def test_bad_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        PPOConfig(**{**SMALL, "total_timesteps": 16 * 32 * 2, field: value}).validate()


def test_categorical_without_share_levels_raises_naming_the_field():
    with pytest.raises(ValueError, match="share_levels"):
        PPOConfig(**{**SMALL, "total_timesteps": 16 * 32 * 2, "distribution": "categorical"}).validate()


def test_categorical_log_prob_entropy_and_samples_match_numpy():
    rng = np.random.default_rng(2)
    logits = rng.normal(0.0, 2.0, (6, 3, 5)).astype(np.float32)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    index = rng.integers(0, 5, (6, 3))
    want = np.log(np.take_along_axis(p, index[..., None], -1)[..., 0]).sum(-1)
    np.testing.assert_allclose(categorical_log_prob(jnp.asarray(index, jnp.float32), jnp.asarray(logits)), want, rtol=1e-5)
    np.testing.assert_allclose(categorical_entropy(jnp.asarray(logits)), -(p * np.log(p)).sum((-2, -1)), rtol=1e-5)
    np.testing.assert_array_equal(categorical_mode(jnp.asarray(logits)), p.argmax(-1))
    draws = jax.vmap(lambda k: categorical_sample(k, jnp.asarray(logits[0])))(jax.random.split(jax.random.key(0), 20000))
    freq = np.stack([(np.asarray(draws) == level).mean(0) for level in range(5)], -1)
    np.testing.assert_allclose(freq, p[0], atol=0.015)


@pytest.mark.parametrize("distribution", ["beta", "categorical"])
def test_common_action_gives_every_device_the_same_level(distribution):
    env = TinyEnv(num_devices=4)
    config = PPOConfig(**SMALL, total_timesteps=16 * 32 * 2, action="common", distribution=distribution, share_levels=4)
    trainer = Trainer(config, env, env.default_params())
    assert trainer.action_dim == 1
    runner = jax.jit(trainer.init)(jax.random.PRNGKey(0), trainer.default_hparams())
    obs = jax.random.uniform(jax.random.key(1), (256, env.obs_dim))
    shares = np.asarray(jax.vmap(trainer.policy(runner, deterministic=False))(jax.random.split(jax.random.key(2), 256), obs))
    assert shares.shape == (256, 4)
    assert (shares == shares[:, :1]).all()
    assert set(np.unique(shares)) <= set(np.asarray(share_grid(4)).tolist())
    assert len(np.unique(shares)) >= 3  # an untrained policy tries several levels


def test_free_clip_gives_each_device_its_free_share_within_cap_and_floor():
    env = TinyEnv(num_devices=4)
    config = PPOConfig(**SMALL, total_timesteps=16 * 32 * 2, action="free_clip", distribution="categorical",
                       share_levels=4)
    trainer = Trainer(config, env, env.default_params())
    assert trainer.action_dim == 2
    grid = np.asarray(share_grid(4))
    rng = np.random.default_rng(0)
    index = rng.integers(0, 5, (300, 2))
    obs = rng.uniform(0.0, 1.0, (300, env.obs_dim)).astype(np.float32)
    got = np.asarray(trainer.shares(jnp.asarray(index, jnp.float32), jnp.asarray(obs)))
    cap, floor = grid[index[:, :1]], grid[index[:, 1:]]
    want = np.clip(obs[:, :4], np.minimum(floor, cap), cap)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert (got <= cap + 1e-7).all() and (got >= np.minimum(floor, cap) - 1e-7).all()


def test_clip_pairs_are_the_ordered_level_pairs_and_map_like_free_clip():
    pairs = np.asarray(clip_pairs(4))
    grid = np.asarray(share_grid(4))[1:]
    want = [(c, f) for c in grid for f in grid if f <= c]
    assert pairs.shape == (10, 2)
    np.testing.assert_allclose(pairs, want, rtol=1e-6)
    env = TinyEnv(num_devices=4)
    config = PPOConfig(**SMALL, total_timesteps=16 * 32 * 2, action="clip_pairs", distribution="categorical",
                       share_levels=4)
    trainer = Trainer(config, env, env.default_params())
    assert trainer.action_dim == 1 and trainer.choices == 10
    rng = np.random.default_rng(1)
    index = rng.integers(0, 10, (300, 1))
    obs = rng.uniform(0.0, 1.0, (300, env.obs_dim)).astype(np.float32)
    got = np.asarray(trainer.shares(jnp.asarray(index, jnp.float32), jnp.asarray(obs)))
    cap, floor = pairs[index[:, 0], :1], pairs[index[:, 0], 1:]
    np.testing.assert_allclose(got, np.clip(obs[:, :4], floor, cap), rtol=1e-6)
    common = index[:, 0] == 9  # the pair (1, 1): the whole of every device
    assert (got[common] == 1.0).all()
    # the network has one categorical over the 10 pairs, and an untrained policy tries many of them
    runner = jax.jit(trainer.init)(jax.random.PRNGKey(0), trainer.default_hparams())
    actions = jax.vmap(lambda k, o: trainer.sample(k, trainer.network.apply(runner.params, o)[0]))(
        jax.random.split(jax.random.key(3), 256), jnp.asarray(obs[:256]))
    assert np.asarray(actions).shape == (256, 1) and len(np.unique(np.asarray(actions))) >= 6
    # and it trains under jit
    _, metrics = jax.jit(make_train(config, env, env.default_params()))(jax.random.PRNGKey(1))
    assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values())
    with pytest.raises(ValueError, match="clip_pairs"):
        PPOConfig(**SMALL, action="clip_pairs", distribution="beta", share_levels=4).validate()


def test_clip_pairs_over_given_levels():
    levels = (0.1, 0.25, 1 / 3, 0.5, 1.0)
    pairs = np.asarray(clip_pairs(levels))
    assert pairs.shape == (15, 2) and (pairs[:, 1] <= pairs[:, 0]).all()
    np.testing.assert_allclose(pairs[:3], [(0.1, 0.1), (0.25, 0.1), (0.25, 0.25)], rtol=1e-6)
    want = sorted((c, f) for c in levels for f in levels if f <= c)
    np.testing.assert_allclose(sorted(map(tuple, pairs.astype(np.float64))), want, rtol=1e-6)
    env = TinyEnv(num_devices=4)
    config = PPOConfig(**SMALL, action="clip_pairs", distribution="categorical", share_levels=4,
                       pair_levels=(1.0, 0.5, 0.1))  # any order
    trainer = Trainer(config, env, env.default_params())
    assert trainer.choices == 6
    obs = jnp.full((env.obs_dim,), 0.05).at[1].set(0.7)
    np.testing.assert_allclose(np.asarray(trainer.shares(jnp.array([1.0]), obs)), [0.1, 0.5, 0.1, 0.1], rtol=1e-6)
    from jaxsplit.agents.run import config_from_json, config_to_json

    assert config_from_json(json.loads(json.dumps(config_to_json(config)))) == config
    for bad in ((0.0, 1.0), (0.5, 1.5), (0.5, 0.5)):
        with pytest.raises(ValueError, match="pair_levels"):
            PPOConfig(**SMALL, action="clip_pairs", distribution="categorical", share_levels=4,
                      pair_levels=bad).validate()
    with pytest.raises(ValueError, match="pair_levels"):
        PPOConfig(**SMALL, action="common", distribution="categorical", share_levels=4, pair_levels=(0.5,)).validate()


def test_categorical_learning_beats_random_clearly():
    env = TinyEnv()
    config = PPOConfig(**SMALL, total_timesteps=16 * 32 * 50, distribution="categorical", share_levels=4)
    train = make_train(config, env, env.default_params())
    runner, metrics = jax.jit(train)(jax.random.PRNGKey(0))
    learned = _policy_error(env, train.trainer.policy(runner), jax.random.key(5))
    random = _policy_error(env, lambda k, o: jax.random.uniform(k, (env.num_devices,)), jax.random.key(5))
    assert learned < 0.5 * random
    assert float(metrics["reward"][-5:].mean()) > float(metrics["reward"][:5].mean()) + 0.1
    lr = np.asarray(metrics["lr"])  # annealed linearly to 0 (up to rounding), never below
    assert lr[0] > 0 and (np.diff(lr) <= 0).all() and (lr >= 0).all() and lr[-1] < 1e-6 * lr[0]


def test_snap_shares_rounds_to_the_nearest_unit_fraction():
    np.testing.assert_allclose(np.asarray(share_grid(4)), [0.0, 0.25, 1 / 3, 0.5, 1.0], rtol=1e-6)
    x = np.random.default_rng(3).uniform(0.0, 1.0, (500, 4)).astype(np.float32)
    got = np.asarray(snap_shares(jnp.asarray(x), 4))
    grid = np.array([0.0, 0.25, 1 / 3, 0.5, 1.0], np.float32)
    want = grid[np.argmin(np.abs(x[..., None] - grid), axis=-1)]
    np.testing.assert_array_equal(got, want)
    assert set(np.unique(got)) <= set(grid)
    # two halves and three thirds fill a device exactly; levels=0 leaves actions alone
    assert np.asarray(snap_shares(jnp.array([0.47, 0.6]), 4)).sum() == 1.0
    np.testing.assert_array_equal(np.asarray(snap_shares(jnp.asarray(x), 0)), x)


def test_grouped_return_statistics_equal_each_group_on_its_own():
    rng = np.random.default_rng(4)
    batches = [(rng.normal(3.0, 2.0, 64).astype(np.float32), rng.integers(0, 3, 64)) for _ in range(5)]
    batches.append((rng.normal(0.0, 1.0, 8).astype(np.float32), np.zeros(8, int)))  # groups 1, 2 absent
    stats = RunningStats.create_grouped(3)
    for x, g in batches:
        stats = stats.update_grouped(jnp.asarray(x), jnp.asarray(g, jnp.int32))
    for group in range(3):
        alone = RunningStats.create()
        for x, g in batches:
            if np.any(g == group):
                alone = alone.update(jnp.asarray(x[g == group]))
        values = np.concatenate([x[g == group] for x, g in batches])
        np.testing.assert_allclose(float(stats.mean[group]), float(alone.mean), rtol=1e-5)
        np.testing.assert_allclose(float(stats.var[group]), float(alone.var), rtol=1e-4)
        np.testing.assert_allclose(float(stats.var[group]), values.var(), rtol=1e-3)


@pytest.fixture(scope="module")
def trained():
    env = TinyEnv()
    config = PPOConfig(**SMALL, total_timesteps=16 * 32 * 50)
    train = make_train(config, env, env.default_params())
    runner, metrics = jax.jit(train)(jax.random.PRNGKey(0))
    return train, runner, metrics


def _policy_error(env, policy, key, n=4096):
    keys = jax.random.split(key, n)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(keys, env.default_params())
    action = jax.vmap(policy)(keys, obs)
    return float(jnp.abs(action - state.target).mean())


def test_learning_beats_random_clearly(trained):
    train, runner, metrics = trained
    trainer = train.trainer
    learned = _policy_error(trainer.env, trainer.policy(runner), jax.random.key(5))
    random = _policy_error(trainer.env, lambda k, o: jax.random.uniform(k, (trainer.env.num_devices,)),
                           jax.random.key(5))
    assert random > 0.3
    assert learned < 0.5 * random
    assert float(metrics["reward"][-5:].mean()) > float(metrics["reward"][:5].mean()) + 0.1


def test_metrics_are_finite_scalars_per_update(trained):
    train, runner, metrics = trained
    assert set(metrics) == set(METRICS)
    for name, value in metrics.items():
        assert value.shape == (train.trainer.config.num_updates,), name
    chex.assert_tree_all_finite((runner.params, metrics))


def test_same_seed_same_parameters_other_seed_differs(trained):
    train, runner, _ = trained
    again, _ = jax.jit(train)(jax.random.PRNGKey(0))
    chex.assert_trees_all_equal(runner.params, again.params)
    other, _ = jax.jit(train)(jax.random.PRNGKey(1))
    assert not np.array_equal(np.asarray(jax.tree.leaves(other.params)[0]), np.asarray(jax.tree.leaves(runner.params)[0]))


def test_no_recompilation_across_calls_and_hyperparameters():
    env = TinyEnv()
    trainer = Trainer(PPOConfig(**{**SMALL, "total_timesteps": 16 * 32 * 2}), env, env.default_params())
    run = jax.jit(chex.assert_max_traces(trainer.run, n=1), static_argnums=2)
    hp = trainer.default_hparams()
    runner = jax.jit(trainer.init)(jax.random.PRNGKey(0), hp)
    for lr in (1e-3, 2e-3, 5e-4):
        runner, _ = run(runner, hp.replace(lr=jnp.float32(lr)), 1)
    assert int(runner.update) == 3


def test_traced_hyperparameters_change_the_result():
    env = TinyEnv()
    trainer = Trainer(PPOConfig(**{**SMALL, "total_timesteps": 16 * 32 * 2}), env, env.default_params())
    train = jax.jit(trainer.train)
    hp = trainer.default_hparams()
    a, _ = train(jax.random.PRNGKey(0), hp)
    b, _ = train(jax.random.PRNGKey(0), hp.replace(lr=jnp.float32(1e-2)))
    c, _ = train(jax.random.PRNGKey(0), hp.replace(util_weight=jnp.float32(5.0)))
    leaf = lambda r: np.asarray(jax.tree.leaves(r.params)[0])
    assert not np.array_equal(leaf(a), leaf(b))
    assert not np.array_equal(leaf(a), leaf(c))
    assert isinstance(hp, HyperParams)
