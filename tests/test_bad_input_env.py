"""The environment's parameters over the whole input space: every draw across and beyond the
documented ranges (docs/MODEL.md section 8) is either refused with a ValueError naming the field, or
gives a reset and steps whose observation, reward and latency are finite."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jaxsplit import contract, envs

ENV, _ = envs.make("alloc-v0", models=("resnet18",), input_size=(32, 32), requests=8, slots=4)
RESET = jax.jit(ENV.reset)
STEP = jax.jit(ENV.step)
BEYOND = [0.0, -1.0, 1e-45, 1e25, 1e39, math.inf, -math.inf, math.nan]


def _mix(valid, beyond=st.sampled_from(BEYOND)):
    return st.integers(0, 11).flatmap(lambda k: beyond if k == 0 else valid)


def _log(lo, hi):
    return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0 ** e)


@st.composite
def overrides(draw):
    out = {}
    for lo, hi, rng in (("flops_min", "flops_max", (contract.MIN_CAPACITY, contract.MAX_CAPACITY)),
                        ("bandwidth_min", "bandwidth_max", (contract.MIN_CAPACITY, contract.MAX_CAPACITY)),
                        ("latency_min", "latency_max", (1e-6, 10.0)), ("load_min", "load_max", (0.01, 10.0))):
        if draw(st.booleans()):
            a, b = sorted([draw(_log(*rng)), draw(_log(*rng))])
            out[lo], out[hi] = draw(_mix(st.just(a))), draw(_mix(st.just(b)))
    for name, valid in (("util_weight", st.floats(0, 5)), ("invalid_penalty", st.floats(0, 5)),
                        ("min_share", _log(contract.MIN_SHARE, 1.0))):
        if draw(st.booleans()):
            out[name] = draw(_mix(valid))
    if draw(st.booleans()):
        cap = _mix(_log(1e6, 1e12))
        out["cluster"] = ([draw(cap) for _ in range(4)], [math.inf] + [draw(cap) for _ in range(3)],
                          [0.0] + [draw(_mix(st.floats(0, 0.01))) for _ in range(3)])
    return out


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kw=overrides(), seed=st.integers(0, 2**16), action=st.lists(st.floats(0, 1), min_size=4, max_size=4))
def test_env_params_are_refused_or_finite(compilation_cache, kw, seed, action):
    try:
        params = ENV.default_params(**kw)
    except ValueError as err:
        assert re.search(r"field '[^']+'", str(err)) and "\n" not in str(err), err
        event("refused")
        return
    event("stepped")
    obs, state = RESET(jax.random.key(seed), params)
    assert np.isfinite(np.asarray(obs)).all()
    for k in range(3):
        obs, state, reward, _, _, info = STEP(jax.random.key(seed + k + 1), state, jnp.asarray(action), params)
        assert np.isfinite(np.asarray(obs)).all() and np.isfinite(float(reward)), (kw, obs, reward)
        assert math.isfinite(float(info["latency"])) and float(info["latency"]) >= 0, info


@pytest.mark.parametrize("kw, field", [
    (dict(flops_max=1e39), "flops_max"), (dict(min_share=1e-45), "min_share"),
    (dict(util_weight=math.nan), "util_weight"), (dict(load=-1.0), "load_min"),
    (dict(cluster=([1e9, 1e39, 1e9, 1e9], [math.inf, 1e8, 1e8, 1e8], [0, 0, 0, 0])), "cluster.flops[1]"),
])
def test_make_names_the_field(kw, field):
    with pytest.raises(ValueError, match=re.escape(f"field '{field}'")):
        envs.make("alloc-v0", **kw)
