"""The episode draws follow their stated laws (MODEL.md section 6): capacities log-uniform and message
latency uniform in their ranges with device 0 the local coordinator, the load uniform, the device count
uniform over its integer range with the first n devices taking part, the model from the mix.

Each law is checked on 20,000 draws from fixed keys with a goodness-of-fit test at a level far below
what a correct sampler reaches by chance (p < 1e-6), so the test is deterministic and cannot pass for
a sampler with the wrong range, scale or weights."""

import jax
import numpy as np
import pytest
from scipy import stats

from jaxsplit import envs

DRAWS = 20_000
P_FLOOR = 1e-6


@pytest.fixture(scope="module")
def env_params():
    return envs.make("alloc-n8-v0", models=("alexnet", "vgg16", "resnet18"), mix=(0.5, 0.3, 0.2),
                     load_min=0.3, load_max=1.4, devices_min=3, devices_max=7)


def _draw(fn, params, seed):
    return jax.tree.map(np.asarray, jax.jit(jax.vmap(fn, in_axes=(0, None)))(
        jax.random.split(jax.random.key(seed), DRAWS), params))


def _uniform_fit(u: np.ndarray, what: str) -> None:
    assert np.all((u >= 0) & (u <= 1)), (what, u.min(), u.max())
    p = stats.kstest(u.ravel()[:DRAWS], "uniform").pvalue
    assert p > P_FLOOR, (what, p)


def test_cluster_is_log_uniform_in_its_ranges_with_a_local_coordinator(env_params):
    env, params = env_params
    c = _draw(env.sample_cluster, params, 0)
    assert c.flops.shape == (DRAWS, 8)
    assert np.all(np.isinf(c.bandwidth[:, 0])) and np.all(c.latency[:, 0] == 0)

    def log_position(x, lo, hi):
        return (np.log(x.astype(np.float64)) - np.log(float(lo))) / (np.log(float(hi)) - np.log(float(lo)))

    for d in range(8):  # every device, the coordinator's compute included
        _uniform_fit(np.clip(log_position(c.flops[:, d], params.flops_min, params.flops_max), 0, 1), f"flops {d}")
    for d in range(1, 8):
        _uniform_fit(np.clip(log_position(c.bandwidth[:, d], params.bandwidth_min, params.bandwidth_max), 0, 1),
                     f"bandwidth {d}")
        lo, hi = float(params.latency_min), float(params.latency_max)
        _uniform_fit(np.clip((c.latency[:, d].astype(np.float64) - lo) / (hi - lo), 0, 1), f"latency {d}")
    # the devices are drawn independently of one another
    assert abs(np.corrcoef(np.log(c.flops[:, 1]), np.log(c.flops[:, 2]))[0, 1]) < 0.05
    assert abs(np.corrcoef(np.log(c.flops[:, 1]), np.log(c.bandwidth[:, 1]))[0, 1]) < 0.05


def test_load_is_uniform_in_its_range(env_params):
    env, params = env_params
    load = _draw(env.sample_load, params, 1).astype(np.float64)
    _uniform_fit(np.clip((load - 0.3) / (1.4 - 0.3), 0, 1), "load")


def test_device_count_is_uniform_over_its_integers_and_takes_the_first_devices(env_params):
    env, params = env_params
    pool = _draw(env.sample_pool, params, 2)
    count = pool.sum(axis=1)
    # the present devices are 0 .. count - 1
    np.testing.assert_array_equal(pool, np.arange(8)[None, :] < count[:, None])
    seen = np.bincount(count, minlength=9)
    assert seen[:3].sum() == 0 and seen[8] == 0, seen
    p = stats.chisquare(seen[3:8]).pvalue  # 3, 4, 5, 6, 7 equally likely
    assert p > P_FLOOR, (seen, p)


def test_device_count_of_a_point_range_and_of_a_fixed_cluster(env_params):
    env, _ = env_params
    point = env.default_params(devices_min=5, devices_max=5)
    assert np.all(_draw(env.sample_pool, point, 3).sum(axis=1) == 5)
    # the sets observation keeps N devices with a fixed cluster and pads it with absent ones
    env_any, fixed = envs.make("alloc-any-v0", cluster=([2e10, 5e10, 3e10], [np.inf, 1.25e8, 6e7], [0.0, 2e-3, 1e-3]))
    pool = _draw(env_any.sample_pool, fixed, 4)
    np.testing.assert_array_equal(pool, np.broadcast_to(np.arange(env_any.num_devices) < 3, pool.shape))


def test_model_follows_the_mix(env_params):
    env, params = env_params
    model = _draw(env.sample_model, params, 5)
    assert model.dtype == np.int32
    seen = np.bincount(model, minlength=3)
    p = stats.chisquare(seen, DRAWS * np.array([0.5, 0.3, 0.2])).pvalue
    assert p > P_FLOOR, (seen, p)
