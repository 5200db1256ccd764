"""The action wrappers of jaxsplit.envs.actions on the allocation environment: each decodes its action
into the shares its definition says, from the state's free shares, and a wrapped step is the plain step
on those shares."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsplit import envs
from jaxsplit.envs import spaces
from jaxsplit.envs.actions import clip_pairs, share_grid, snap_shares, wrap_action


@pytest.fixture(scope="module")
def busy_states():
    """16 states of a loaded 4-device environment (reservations held, so free shares differ)."""
    env, params = envs.make("alloc-v0", load=1.4, requests=64)
    keys = jax.random.split(jax.random.key(0), 16)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    shares = jnp.tile(jnp.array([0.5, 0.25, 1 / 3, 0.5]), (16, 1))
    for i in range(12):
        obs, state, *_ = step(jax.random.split(jax.random.key(i + 1), 16), state, shares, params)
    obs, state = jax.device_get((obs, state))
    free = np.asarray(jax.vmap(env.free_shares)(state))
    assert len(np.unique(free.round(4))) > 2  # the states really differ
    np.testing.assert_array_equal(free, np.asarray(obs)[:, :4])  # the observation's first N entries
    return env, params, state, free


def _decode(wrapped, actions, states, params):
    return np.asarray(jax.jit(jax.vmap(wrapped.decode, in_axes=(0, 0, None)))(actions, states, params))


def test_share_grid_and_snap_round_to_the_nearest_unit_fraction():
    np.testing.assert_allclose(np.asarray(share_grid(4)), [0.0, 0.25, 1 / 3, 0.5, 1.0], rtol=1e-6)
    x = np.random.default_rng(3).uniform(0.0, 1.0, (500, 4)).astype(np.float32)
    got = np.asarray(snap_shares(jnp.asarray(x), 4))
    grid = np.array([0.0, 0.25, 1 / 3, 0.5, 1.0], np.float32)
    np.testing.assert_array_equal(got, grid[np.argmin(np.abs(x[..., None] - grid), axis=-1)])
    assert np.asarray(snap_shares(jnp.array([0.47, 0.6]), 4)).sum() == 1.0  # two halves fill a device
    np.testing.assert_array_equal(np.asarray(snap_shares(jnp.asarray(x), 0)), x)


@pytest.mark.slow
@pytest.mark.parametrize("discrete", [False, True])
def test_per_device_and_common(busy_states, discrete):
    env, params, states, _ = busy_states
    grid = np.asarray(share_grid(4))
    rng = np.random.default_rng(1)
    per = wrap_action(env, "per_device", discrete, 4)
    common = wrap_action(env, "common", discrete, 4)
    if discrete:
        assert per.action_space() == spaces.MultiDiscrete((5,) * 4)
        assert common.action_space() == spaces.MultiDiscrete((5,))
        index = rng.integers(0, 5, (16, 4))
        np.testing.assert_allclose(_decode(per, jnp.asarray(index), states, params), grid[index], rtol=1e-6)
        got = _decode(common, jnp.asarray(index[:, :1]), states, params)
        np.testing.assert_allclose(got, np.broadcast_to(grid[index[:, :1]], (16, 4)), rtol=1e-6)
    else:
        assert per.action_space() == spaces.Box(0.0, 1.0, (4,))
        x = rng.uniform(0, 1, (16, 4)).astype(np.float32)
        np.testing.assert_array_equal(_decode(per, jnp.asarray(x), states, params), np.asarray(snap_shares(x, 4)))
        got = _decode(common, jnp.asarray(x[:, :1]), states, params)
        assert (got == got[:, :1]).all() and set(np.unique(got)) <= set(grid.tolist())


@pytest.mark.slow
def test_free_clip_gives_each_device_its_free_share_within_cap_and_floor(busy_states):
    env, params, states, free = busy_states
    wrapped = wrap_action(env, "free_clip", True, 4)
    assert wrapped.action_space() == spaces.MultiDiscrete((5, 5))
    grid = np.asarray(share_grid(4))
    index = np.random.default_rng(0).integers(0, 5, (16, 2))
    got = _decode(wrapped, jnp.asarray(index), states, params)
    cap, floor = grid[index[:, :1]], grid[index[:, 1:]]
    np.testing.assert_allclose(got, np.clip(free, np.minimum(floor, cap), cap), rtol=1e-6)


@pytest.mark.slow
def test_clip_pairs_are_the_ordered_level_pairs_and_clip_the_free_shares(busy_states):
    env, params, states, free = busy_states
    pairs = np.asarray(clip_pairs(4))
    grid = np.asarray(share_grid(4))[1:]
    assert pairs.shape == (10, 2)
    np.testing.assert_allclose(pairs, [(c, f) for c in grid for f in grid if f <= c], rtol=1e-6)
    wrapped = wrap_action(env, "clip_pairs", True, 4)
    assert wrapped.action_space() == spaces.Discrete(10)
    index = np.arange(16) % 10
    got = _decode(wrapped, jnp.asarray(index, jnp.int32), states, params)
    np.testing.assert_allclose(got, np.clip(free, pairs[index, 1:], pairs[index, :1]), rtol=1e-6)
    assert (got[index == 9] == 1.0).all()  # the pair (1, 1): the whole of every device
    levels = (1.0, 0.5, 0.1)  # any order
    wrapped = wrap_action(env, "clip_pairs", True, 0, levels)
    assert wrapped.action_space() == spaces.Discrete(6)
    np.testing.assert_allclose(np.asarray(clip_pairs(levels))[1], [0.5, 0.1], rtol=1e-6)


@pytest.mark.slow
def test_a_wrapped_step_is_the_plain_step_on_the_decoded_shares(busy_states):
    env, params, states, _ = busy_states
    wrapped = wrap_action(env, "clip_pairs", True, 4)
    keys = jax.random.split(jax.random.key(9), 16)
    index = jnp.arange(16, dtype=jnp.int32) % 10
    shares = jax.jit(jax.vmap(wrapped.decode, in_axes=(0, 0, None)))(index, states, params)
    a = jax.jit(jax.vmap(wrapped.step, in_axes=(0, 0, 0, None)))(keys, states, index, params)
    b = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))(keys, states, shares, params)
    chex.assert_trees_all_equal(a, b)
    assert wrapped.unwrapped is env and wrapped.num_devices == 4 and wrapped.obs_dim == env.obs_dim


@pytest.mark.parametrize("kwargs,field", [
    (dict(action="each"), "action"),
    (dict(action="per_device", discrete=True, share_levels=0), "share_levels"),
    (dict(action="per_device", share_levels=-1), "share_levels"),
    (dict(action="clip_pairs", discrete=False, share_levels=4), "distribution"),
    (dict(action="clip_pairs", discrete=True, share_levels=4, pair_levels=(0.0, 1.0)), "pair_levels"),
    (dict(action="clip_pairs", discrete=True, share_levels=4, pair_levels=(0.5, 0.5)), "pair_levels"),
    (dict(action="common", discrete=True, share_levels=4, pair_levels=(0.5,)), "pair_levels"),
])
def test_bad_action_settings_name_the_field(kwargs, field):
    env, _ = envs.make("alloc-v0")
    with pytest.raises(ValueError, match=field):
        wrap_action(env, **kwargs)
