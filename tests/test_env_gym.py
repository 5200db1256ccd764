"""Gymnasium adapters (single and vector) and the LogWrapper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from jaxsplit import envs
from jaxsplit.envs.gym_adapter import GymnasiumAllocationEnv, GymnasiumAllocationVectorEnv

SMALL = dict(models=("alexnet",), requests=5)


def test_single_adapter_passes_env_checker_and_truncates():
    env = GymnasiumAllocationEnv("alloc-n2-v0", **SMALL)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    assert obs.shape == (env.env.obs_dim,) and obs.dtype == np.float32
    truncs = []
    for _ in range(5):
        obs, reward, term, trunc, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and np.isfinite(reward) and not term
        assert info["latency"] >= info["exec_time"] > 0
        truncs.append(trunc)
    assert truncs == [False] * 4 + [True]
    o1, _ = env.reset(seed=9)
    o2, _ = env.reset(seed=9)
    np.testing.assert_array_equal(o1, o2)


@pytest.mark.slow
def test_vector_adapter_same_step_autoreset():
    with pytest.raises(ValueError, match="num_envs"):
        GymnasiumAllocationVectorEnv(0)
    venv = GymnasiumAllocationVectorEnv(3, "alloc-n2-v0", **SMALL)
    obs, _ = venv.reset(seed=1)
    assert obs.shape == (3, venv.env.obs_dim) and venv.observation_space.contains(obs)
    for t in range(5):
        obs, reward, term, trunc, info = venv.step(venv.action_space.sample())
        assert reward.shape == (3,) and info["latency"].shape == (3,)
        assert venv.observation_space.contains(obs)
    assert trunc.all() and info["_final_obs"].all()
    assert not np.allclose(info["final_obs"], obs)  # the returned obs starts the next episode
    again, _ = venv.reset(seed=1)
    first, _ = GymnasiumAllocationVectorEnv(3, "alloc-n2-v0", **SMALL).reset(seed=1)
    np.testing.assert_array_equal(again, first)


@pytest.mark.slow
def test_log_wrapper_episode_statistics():
    env, params = envs.make("alloc-n2-v0", **SMALL)
    log = envs.LogWrapper(env)
    assert log.obs_dim == env.obs_dim
    obs, state = log.reset(jax.random.key(0), params)
    step = jax.jit(log.step)
    rewards, lats, utils = [], [], []
    for t in range(5):
        obs, state, r, term, trunc, info = step(jax.random.key(t + 1), state, jnp.ones(2), params)
        rewards.append(float(r))
        lats.append(float(info["latency"]))
        utils.append(float(info["utilization"]))
        assert bool(info["returned_episode"]) == (t == 4)
    assert info["returned_episode_return"].dtype == jnp.float32
    assert info["returned_episode_length"].dtype == jnp.int32 and int(info["returned_episode_length"]) == 5
    np.testing.assert_allclose(info["returned_episode_return"], sum(rewards), rtol=1e-5)
    np.testing.assert_allclose(info["returned_mean_latency"], np.mean(lats), rtol=1e-5)
    np.testing.assert_allclose(info["returned_utilization"], np.mean(utils), rtol=1e-5)
    assert float(state.episode_return) == 0 and int(state.episode_length) == 0
