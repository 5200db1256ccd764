"""The GPU and TPU paths keep lowering: ``jax.export`` for platforms ("cuda", "tpu") of the batched closed
form, its flat array code, the vmapped environment step and a tiny config's PPO ``train``.

No module lowered for them may hold a custom call whose target is registered only for the CPU (the
compiled closed-form kernel and LAPACK must stay in the CPU branch of ``platform_dependent``), and the
jitted training loop may hold no host callback. Exporting needs no GPU or TPU: lowering for a
platform only needs its lowering rules, which JAX has on every machine.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.lib import xla_client

from jaxsplit import envs, kernels, sampling, solvers
from jaxsplit.agents.ppo import PPOConfig, make_train

ACCELERATORS = ("cuda", "tpu")
_TARGET = re.compile(r'(?:stablehlo\.custom_call\s+@|call_target_name\s*=\s*")([\w.$-]+)')


def targets(exported: jax.export.Exported) -> set[str]:
    """Custom-call targets named anywhere in an exported module."""
    return set(_TARGET.findall(exported.mlir_module()))


def cpu_only_targets() -> set[str]:
    """Custom-call targets registered for the CPU (the host's LAPACK, DUCC, callbacks, jaxsplit's kernel).

    XLA resolves a custom call by (target, platform); none of these is registered for CUDA or TPU here,
    so a module for those platforms naming one could not run there."""
    jnp.zeros(1).block_until_ready()  # the CPU client registers its targets when it starts
    kernels.available()  # and jaxsplit registers its kernel when it loads it
    return set(xla_client.custom_call_targets("cpu"))


def export(fn, *args, platforms=ACCELERATORS, allow=()) -> jax.export.Exported:
    """``jax.export`` of ``jit(fn)``; its own check refuses custom calls without a compatibility
    guarantee (the accelerator exports keep it on), ``allow`` lifts it for the named targets."""
    checks = [jax.export.DisabledSafetyCheck.custom_call(t) for t in allow]
    return jax.export.export(jax.jit(fn), platforms=platforms, disabled_checks=checks)(*args)


def assert_portable(exported: jax.export.Exported) -> None:
    found = targets(exported)
    bad = found & cpu_only_targets()
    assert not bad, f"CPU-only custom calls in a module for {exported.platforms}: {sorted(bad)}"


@pytest.fixture(scope="module")
def instances():
    return jax.device_put(sampling.random_arrays(np.random.default_rng(0), 64, 4, pool=64))


def test_target_scan_finds_the_cpu_kernel(instances):
    """The check can fail: lowered for the CPU, the closed form names the compiled kernel's target."""
    if not kernels.available():
        pytest.skip("the compiled CPU kernel is unavailable here (no C++ compiler)")
    kernel = {t for t in cpu_only_targets() if t.startswith("jaxsplit_")}
    exported = export(solvers.solve_device_major, *instances, platforms=("cpu",), allow=kernel)
    assert targets(exported) & cpu_only_targets()
    both = export(solvers.solve_device_major, *instances, platforms=("cpu", "cuda"), allow=kernel)
    assert any(t.startswith("jaxsplit_closed_form_rows") for t in targets(both))  # the CPU branch is there


def test_batched_closed_form_exports(instances):
    exported = export(solvers.batched_solver("closed_form"), *instances)
    assert exported.platforms == ACCELERATORS
    assert exported.out_avals[0].shape == (64, 4)
    assert_portable(exported)


def test_flat_array_code_exports(instances):
    assert_portable(export(solvers.solve_device_major_arrays, *instances))


@pytest.mark.parametrize("name", ["exact", "rebalance"])
def test_other_batched_solvers_export(instances, name):
    assert_portable(export(solvers.batched_solver(name), *instances))


@pytest.mark.slow
def test_vmapped_environment_step_exports():
    env, params = envs.make("alloc-v0", num_devices=4)
    batch = 8
    _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.key(0), batch), params)
    keys = jax.random.split(jax.random.key(1), batch)
    action = jnp.full((batch, 4), 0.5)
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    assert_portable(export(step, keys, state, action, params))
    # the flat array code that computes the requests' E off the CPU (batched itself), on its own
    assert_portable(export(env.engine._array_exec_times, state.cluster, jnp.full((batch, 4), 0.5), jnp.zeros(batch, jnp.int32)))


@pytest.mark.slow
def test_tiny_train_exports_without_host_callbacks():
    spec = envs.EnvSpec()
    config = dataclasses.replace(PPOConfig(), num_envs=4, num_steps=8, num_minibatches=2, update_epochs=1,
                                 total_timesteps=4 * 8)
    exported = export(make_train(config, *spec.make()), jax.random.PRNGKey(0))
    assert_portable(exported)
    found = targets(exported)
    callbacks = {t for t in found if "callback" in t}
    assert not callbacks, f"host callbacks in the jitted training loop: {sorted(callbacks)}"
