"""The PPO core on a tiny environment that is not the allocation environment (tests/tiny_env.py): the trainer
gets by with its spaces."""

from __future__ import annotations

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxsplit.agents.distributions import (beta_entropy, beta_log_prob, beta_mean, beta_sample, categorical_entropy,
                                           categorical_log_prob, categorical_mode, categorical_sample)
from jaxsplit.agents.ppo import (PPO_METRICS, STATIC, TRACED, HyperParams, PPOConfig, RunningStats, Trainer, gae,
                                 make_train)
from jaxsplit.envs import spaces
from tiny_env import TinyEnv

# small and quick; the rest as the PPO papers' usual defaults (no entropy bonus, one reward statistic)
SMALL = dict(num_envs=16, num_steps=32, num_minibatches=4, lr=3e-3, ent_coef=0.0, gamma=0.99, gae_lambda=0.95,
             init_concentration=1.0 + float(np.log(2.0)), reward_groups=1)


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
    # a one-step rollout (num_steps = 1): the advantage is that step's delta
    one, _ = gae(*(jnp.asarray(x[:1]) for x in (r, v, nv, term, trunc)), 0.9, 0.8)
    want = _gae_reference(r[:1], v[:1], nv[:1], term[:1].astype(np.float32), trunc[:1].astype(np.float32), 0.9, 0.8)
    np.testing.assert_allclose(np.asarray(one), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("field,value", [("num_envs", 0), ("num_minibatches", 7), ("total_timesteps", 10),
                                         ("lr", -1.0), ("gamma", 1.5), ("clip_eps", 0.0), ("hidden", ()),
                                         ("reward_groups", 0), ("init_concentration", 1.0),
                                         ("init_mean", 1.0), ("max_grad_norm", float("nan"))])
def test_bad_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        PPOConfig(**{**SMALL, "total_timesteps": 16 * 32 * 2, field: value}).validate()


def test_a_config_is_checked_where_it_is_made(tmp_path, capsys):
    from jaxsplit.agents.ppo import deferred_checks
    from jaxsplit.commands.train import main as train_main

    with pytest.raises(ValueError, match="field 'gamma': out of range, got 2"):
        PPOConfig(gamma=2)  # the constructor itself, before any validate() call
    with deferred_checks():
        assert PPOConfig(gamma=2).gamma == 2  # the command line defers the check until tyro is done
    with pytest.raises(ValueError, match="field 'gamma'"):
        PPOConfig.from_json({"gamma": 2})  # a run's config.json goes through the constructor too
    with pytest.raises(ValueError, match="^field 'lr': out of range, got -1.0$"):
        train_main(["--out", str(tmp_path / "run"), "--lr", "-1"])
    assert not (tmp_path / "run").exists()


def test_every_setting_is_declared_once_with_help_and_traced_or_static(capsys):
    import dataclasses
    import tyro

    fields = [f.name for f in dataclasses.fields(PPOConfig)]
    assert set(TRACED) | set(STATIC) == set(fields) and not set(TRACED) & set(STATIC)
    assert set(TRACED) == {"lr", "ent_coef", "clip_eps", "vf_coef", "gamma", "gae_lambda", "max_grad_norm"}
    hp = HyperParams.from_config(PPOConfig(), {"x": 1.0})
    assert [f.name for f in dataclasses.fields(hp)] == list(TRACED) + ["env"]
    assert all(float(getattr(hp, name)) == pytest.approx(getattr(PPOConfig(), name)) for name in TRACED)
    # the command line's defaults are the Python API's, and every field has its help text
    from jaxsplit.commands.train import TrainArgs

    assert tyro.cli(TrainArgs, args=[]).ppo == PPOConfig()
    with pytest.raises(SystemExit):
        tyro.cli(TrainArgs, args=["--help"])
    helptext = capsys.readouterr().out
    for name in fields:
        assert "--" + name.replace("_", "-") in helptext, name
    assert "traced" in helptext  # the help says which settings a population may vary
    assert PPOConfig.from_json(PPOConfig(hidden=(8, 4), lr=0.5).to_json()) == PPOConfig(hidden=(8, 4), lr=0.5)
    with pytest.raises(ValueError, match="share_levels"):
        PPOConfig.from_json({"share_levels": 4})


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


@pytest.mark.slow
def test_categorical_learning_beats_random_clearly():
    env = TinyEnv(levels=4)  # a MultiDiscrete action: a categorical policy per entry
    config = PPOConfig(**SMALL, total_timesteps=16 * 32 * 50)
    train = make_train(config, env, env.default_params())
    assert train.trainer.categorical and train.trainer.action_dim == env.dim
    runner, metrics = jax.jit(train)(jax.random.PRNGKey(0))
    learned = _policy_error(env, lambda k, o: train.trainer.policy(runner)(k, o) / 4.0, jax.random.key(5))
    random = _policy_error(env, lambda k, o: jax.random.uniform(k, (env.dim,)), jax.random.key(5))
    assert learned < 0.5 * random
    assert float(metrics["reward"][-5:].mean()) > float(metrics["reward"][:5].mean()) + 0.1
    lr = np.asarray(metrics["lr"])  # annealed linearly to 0 (up to rounding), never below
    assert lr[0] > 0 and (np.diff(lr) <= 0).all() and (lr >= 0).all() and lr[-1] < 1e-6 * lr[0]


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


@pytest.mark.slow
def test_learning_beats_random_clearly(trained):
    train, runner, metrics = trained
    trainer = train.trainer
    learned = _policy_error(trainer.env, trainer.policy(runner), jax.random.key(5))
    random = _policy_error(trainer.env, lambda k, o: jax.random.uniform(k, (trainer.env.dim,)),
                           jax.random.key(5))
    assert random > 0.3
    assert learned < 0.5 * random
    assert float(metrics["reward"][-5:].mean()) > float(metrics["reward"][:5].mean()) + 0.1


@pytest.mark.slow
def test_metrics_are_finite_scalars_per_update(trained):
    train, runner, metrics = trained
    assert set(metrics) == set(PPO_METRICS)  # the tiny environment gives none of the allocation metrics
    for name, value in metrics.items():
        assert value.shape == (train.trainer.config.num_updates,), name
    chex.assert_tree_all_finite((runner.params, metrics))


@pytest.mark.slow
def test_same_seed_same_parameters_other_seed_differs(trained):
    train, runner, _ = trained
    again, _ = jax.jit(train)(jax.random.PRNGKey(0))
    chex.assert_trees_all_equal(runner.params, again.params)
    other, _ = jax.jit(train)(jax.random.PRNGKey(1))
    assert not np.array_equal(np.asarray(jax.tree.leaves(other.params)[0]), np.asarray(jax.tree.leaves(runner.params)[0]))


@pytest.mark.slow
def test_no_recompilation_across_calls_and_hyperparameters():
    env = TinyEnv()
    trainer = Trainer(PPOConfig(**{**SMALL, "total_timesteps": 16 * 32 * 2}), env, env.default_params())
    run = jax.jit(chex.assert_max_traces(trainer.run, n=1), static_argnums=2)
    hp = trainer.default_hparams()
    runner = jax.jit(trainer.init)(jax.random.PRNGKey(0), hp)
    for lr in (1e-3, 2e-3, 5e-4):
        runner, _ = run(runner, hp.replace(lr=jnp.float32(lr)), 1)
    assert int(runner.update) == 3


@pytest.mark.slow
def test_traced_hyperparameters_change_the_result():
    env = TinyEnv()
    trainer = Trainer(PPOConfig(**{**SMALL, "total_timesteps": 16 * 32 * 2}), env, env.default_params())
    train = jax.jit(trainer.train)
    hp = trainer.default_hparams()
    a, _ = train(jax.random.PRNGKey(0), hp)
    b, _ = train(jax.random.PRNGKey(0), hp.replace(lr=jnp.float32(1e-2)))
    c, _ = train(jax.random.PRNGKey(0), hp.replace(env=hp.env.replace(bonus=jnp.float32(5.0))))  # an env param
    leaf = lambda r: np.asarray(jax.tree.leaves(r.params)[0])
    assert not np.array_equal(leaf(a), leaf(b))
    assert not np.array_equal(leaf(a), leaf(c))
    assert isinstance(hp, HyperParams)


@pytest.mark.slow
def test_trainer_takes_its_network_from_the_spaces():
    for space, categorical, dim in ((spaces.Box(0.0, 1.0, (3,)), False, 3), (spaces.Discrete(7), True, 1),
                                    (spaces.MultiDiscrete((5, 5)), True, 2)):
        env = TinyEnv()
        env.action_space = lambda params=None, space=space: space
        trainer = Trainer(PPOConfig(**{**SMALL, "total_timesteps": 16 * 32}), env, env.default_params())
        assert (trainer.categorical, trainer.action_dim, trainer.obs_dim) == (categorical, dim, env.dim + 2)
        runner = jax.jit(trainer.init)(jax.random.PRNGKey(0), trainer.default_hparams())
        action = trainer.policy(runner, deterministic=False)(jax.random.key(1), jnp.zeros(trainer.obs_dim))
        assert action.shape == space.shape and space.contains(np.asarray(action))
    env = TinyEnv()
    env.action_space = lambda params=None: spaces.Box(-2.0, 3.0, (3,))  # a Beta sample scaled to the box
    trainer = Trainer(PPOConfig(**{**SMALL, "total_timesteps": 16 * 32}), env, env.default_params())
    np.testing.assert_allclose(trainer.env_action(jnp.array([0.0, 0.5, 1.0])), [-2.0, 0.5, 3.0])
    env.action_space = lambda params=None: spaces.MultiDiscrete((2, 3))
    with pytest.raises(ValueError, match="same number of choices"):
        Trainer(PPOConfig(**{**SMALL, "total_timesteps": 16 * 32}), env, env.default_params())


@pytest.mark.slow
def test_reward_groups_read_the_group_from_info():
    env = TinyEnv()
    trainer = Trainer(PPOConfig(**{**SMALL, "total_timesteps": 16 * 32, "reward_groups": 4}), env, env.default_params())
    np.testing.assert_array_equal(trainer.reward_group({"group": jnp.array([0.0, 0.24, 0.26, 0.99, 1.0])}),
                                  [0, 0, 1, 3, 3])
    runner, metrics = jax.jit(trainer.train)(jax.random.PRNGKey(0))
    assert np.asarray(runner.ret_stats.count).shape == (4,) and (np.asarray(runner.ret_stats.count) > 1).all()
    with pytest.raises(ValueError, match="info\\['group'\\]"):
        trainer.reward_group({})


@functools.lru_cache(maxsize=None)
def _rollout_trainer(normalize_obs: bool) -> tuple[Trainer, object, object, object]:
    """A rollout of 8 steps of 4 tiny environments whose episodes are truncated every 3 steps (one
    per setting for the module: the rollout and loss tests share it)."""
    env = TinyEnv(episode_len=3)
    config = PPOConfig(**{**SMALL, "num_envs": 4, "num_steps": 8, "num_minibatches": 1, "total_timesteps": 32,
                          "normalize_obs": normalize_obs, "normalize_reward": False})
    trainer = Trainer(config, env, env.default_params())
    hp = trainer.default_hparams()
    runner = jax.jit(trainer.init)(jax.random.PRNGKey(3), hp)
    runner, traj = jax.jit(trainer.rollout)(runner, hp)
    return trainer, runner, traj, hp


@pytest.mark.slow
def test_rollout_bootstraps_a_truncated_episode_from_its_final_observation():
    """At a truncated step the value target is r + gamma V(final observation): the observation the
    episode ended on (time feature 1, the episode's own hardness), not the next episode's first."""
    trainer, runner, traj, hp = _rollout_trainer(False)  # raw observations, checked feature by feature
    dim = trainer.env.dim
    truncated = np.asarray(traj.truncated)
    assert truncated.any() and not truncated.all() and not np.asarray(traj.terminated).any()
    next_obs, obs = np.asarray(traj.next_obs), np.asarray(traj.obs)
    np.testing.assert_allclose(next_obs[truncated][:, dim], 1.0, rtol=1e-6)  # t / episode_len at its end
    np.testing.assert_allclose(next_obs[truncated][:, dim + 1], obs[truncated][:, dim + 1])  # same episode
    # a step that does not end an episode bootstraps from the next step's observation
    cont = ~truncated[:-1]
    np.testing.assert_allclose(next_obs[:-1][cont], obs[1:][cont], rtol=1e-6)
    assert not np.allclose(next_obs[:-1][truncated[:-1]][:, dim], obs[1:][truncated[:-1]][:, dim])
    adv, target = trainer.advantages(runner.params, traj, hp)
    _, v_next = trainer.network.apply(runner.params, traj.next_obs)
    want = np.asarray(traj.reward) + float(hp.gamma) * np.asarray(v_next)
    np.testing.assert_allclose(np.asarray(target)[truncated], want[truncated], rtol=1e-5, atol=1e-6)
    # and that observation is the environment's final one: V of the post-reset observation differs
    _, v_reset = trainer.network.apply(runner.params, traj.obs[1:])
    assert not np.allclose(np.asarray(v_reset)[truncated[:-1]], np.asarray(v_next)[:-1][truncated[:-1]])


@pytest.mark.slow
@pytest.mark.parametrize("groups", [1, 2])
def test_rollout_scales_rewards_by_the_running_spread_of_discounted_returns(groups):
    """With reward normalisation, each reward is divided by the running standard deviation of the
    discounted returns (per hardness group with reward_groups > 1): numpy's running returns, reset
    after an episode ends, and Chan's merge of each step's batch of returns, against the rollout."""
    env, gamma = TinyEnv(episode_len=3), 0.9
    config = PPOConfig(**{**SMALL, "num_envs": 4, "num_steps": 8, "num_minibatches": 1, "total_timesteps": 32,
                          "normalize_obs": False, "normalize_reward": True, "reward_groups": groups, "gamma": gamma})
    trainer = Trainer(config, env, env.default_params())
    hp = trainer.default_hparams()
    runner = jax.jit(trainer.init)(jax.random.PRNGKey(5), hp)
    runner, traj = jax.jit(trainer.rollout)(runner, hp)
    raw, done = np.asarray(traj.raw_reward, np.float64), np.asarray(traj.truncated | traj.terminated)
    params = env.default_params()
    span = float(params.hardness_hi - params.hardness_lo)
    hardness = np.asarray(traj.obs)[..., env.dim + 1]  # the episode's hardness, in each step's observation
    group = np.clip(np.floor(np.clip((hardness - float(params.hardness_lo)) / span, 0, 1) * groups), 0, groups - 1)
    group = group.astype(int)
    mean, var, count = np.zeros(groups), np.ones(groups), np.full(groups, 1e-4)
    returns, want = np.zeros(raw.shape[1]), np.zeros(raw.shape)
    for t in range(raw.shape[0]):
        returns = returns * gamma + raw[t]
        for g in range(groups):
            x = returns[group[t] == g]
            if x.size:
                total = count[g] + x.size
                delta = x.mean() - mean[g]
                var[g] = (var[g] * count[g] + x.var() * x.size + delta**2 * count[g] * x.size / total) / total
                mean[g], count[g] = mean[g] + delta * x.size / total, total
        want[t] = raw[t] / np.sqrt(var[group[t]] + 1e-8)
        returns = np.where(done[t], 0.0, returns)
    assert done.any() and (groups == 1 or len(np.unique(group)) > 1)
    assert not np.allclose(want, raw, rtol=1e-2)  # the scaling is not the identity here
    np.testing.assert_allclose(np.asarray(traj.reward), want, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(runner.returns), returns, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(runner.ret_stats.var).reshape(-1), var[:groups], rtol=1e-4)


def _loss_reference(alpha, beta_, value, action, old_log_prob, old_value, adv, target, clip, vf, ent):
    """PPO's loss written out in numpy and scipy: the clipped surrogate on standardised advantages,
    the clipped value loss, the entropy bonus."""
    log_prob = stats.beta.logpdf(action, alpha, beta_).sum(-1)
    ratio = np.exp(log_prob - old_log_prob)
    a = (adv - adv.mean()) / (adv.std() + 1e-8)
    surrogate = np.minimum(ratio * a, np.clip(ratio, 1 - clip, 1 + clip) * a)
    actor = -surrogate.mean()
    v_clip = old_value + np.clip(value - old_value, -clip, clip)
    value_loss = 0.5 * np.maximum((value - target) ** 2, (v_clip - target) ** 2).mean()
    entropy = stats.beta.entropy(alpha, beta_).sum(-1).mean()
    approx_kl = np.mean((ratio - 1) - np.log(ratio))  # the k3 estimator of KL(old || new)
    return (actor + vf * value_loss - ent * entropy, actor, value_loss, entropy, np.mean(np.abs(ratio - 1) > clip),
            approx_kl)


def test_ppo_loss_matches_a_numpy_reference():
    """On a batch where some ratios and value moves fall outside the clip range and others inside."""
    trainer, runner, traj, hp = _rollout_trainer(False)
    hp = hp.replace(clip_eps=jnp.float32(0.15), vf_coef=jnp.float32(0.7), ent_coef=jnp.float32(0.05))
    flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), traj)
    rng = np.random.default_rng(4)
    n = flat.reward.shape[0]
    # old log-probabilities and values moved off the current ones: ratios from about 0.6 to 1.7
    flat = flat.replace(log_prob=flat.log_prob + jnp.asarray(rng.uniform(-0.5, 0.5, n), jnp.float32),
                        value=flat.value + jnp.asarray(rng.uniform(-0.4, 0.4, n), jnp.float32))
    adv = jnp.asarray(rng.normal(size=n), jnp.float32)
    target = jnp.asarray(rng.normal(size=n), jnp.float32)
    total, diag = trainer.loss(runner.params, (flat, adv, target), hp)
    (alpha, beta_), value = trainer.network.apply(runner.params, flat.obs)
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    want = _loss_reference(f64(alpha), f64(beta_), f64(value), f64(flat.action), f64(flat.log_prob), f64(flat.value),
                           f64(adv), f64(target), 0.15, 0.7, 0.05)
    clip_frac = want[4]
    assert 0.1 < clip_frac < 0.9  # both sides of the clip are exercised
    v_moved = np.abs(f64(value) - f64(flat.value)) > 0.15
    assert 0.1 < v_moved.mean() < 0.9
    np.testing.assert_allclose(float(total), want[0], rtol=1e-4, atol=1e-5)
    for name, w in zip(("actor_loss", "value_loss", "entropy", "clip_frac", "approx_kl"), want[1:]):
        np.testing.assert_allclose(float(diag[name]), w, rtol=1e-4, atol=1e-5, err_msg=name)
