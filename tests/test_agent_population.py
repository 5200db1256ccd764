"""Populations: traced hyperparameter grids, sharding over devices (equal to unsharded), two hosts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsplit.agents.population import population_fn, population_grid, train_population
from jaxsplit.agents.ppo import HyperParams, PPOConfig, Trainer, make_train
from tiny_env import TinyEnv

WORKER = str(Path(__file__).resolve().parent / "population_worker.py")


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    return env


def _run(args, devices, timeout=240):
    return subprocess.run([sys.executable, WORKER, *args], env=_env(devices), capture_output=True, text=True,
                          timeout=timeout)


def _load(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def test_population_grid_is_the_product_of_seeds_and_values():
    env = TinyEnv()
    base = Trainer(PPOConfig(num_envs=4, num_steps=4, num_minibatches=1, total_timesteps=16), env,
                   env.default_params()).default_hparams()
    keys, hp, rows = population_grid(base, 3, lr=[1e-3, 1e-4], gamma=[0.9, 0.99])
    assert keys.shape == (12, 2) and keys.dtype == np.uint32
    assert hp.lr.shape == (12,) and sorted(set(hp.lr.tolist())) == pytest.approx([1e-4, 1e-3])
    assert np.all(hp.clip_eps == np.float32(base.clip_eps))
    assert len({(r["seed"], r["lr"], r["gamma"]) for r in rows}) == 12
    with pytest.raises(ValueError, match="nope"):
        population_grid(base, 2, nope=[1.0])
    assert isinstance(hp, HyperParams)
    # an environment parameter is searched like a PPO setting; the others are repeated per agent
    keys, hp, rows = population_grid(base, 2, bonus=[0.0, 0.5], ent_coef=[0.0, 0.1])
    assert hp.env.bonus.shape == (8,) and sorted(set(hp.env.bonus.tolist())) == [0.0, 0.5]
    assert [r["bonus"] for r in rows] == hp.env.bonus.tolist()
    assert np.all(hp.env.hardness_hi == np.float32(base.env.hardness_hi)) and hp.env.hardness_hi.shape == (8,)


def _tiny_train():
    env = TinyEnv()
    config = PPOConfig(num_envs=8, num_steps=16, num_minibatches=2, total_timesteps=8 * 16 * 3)
    return make_train(config, env, env.default_params())


def _lapack_batch_dims(train, init: str, agents: int) -> list[int]:
    """``num_batch_dims`` of every LAPACK custom call in the lowered population program."""
    keys, hp, _ = population_grid(train.trainer.default_hparams(), agents)
    text = jax.jit(population_fn(train, init)).lower(jnp.asarray(keys), jax.tree.map(jnp.asarray, hp)).as_text()
    lines = [line for line in text.splitlines() if "custom_call @lapack_" in line]
    return [int(re.search(r'num_batch_dims = "(\d+)"', line).group(1)) for line in lines]


def test_population_initialises_agents_without_batched_lapack_calls():
    # vmapped, the orthogonal initialisation's QR becomes batched LAPACK calls, which jaxlib's CPU
    # kernels split over XLA's intra-op pool from inside it (a deadlock on few cores); "map" keeps
    # every call unbatched, one matrix each.
    train = _tiny_train()
    mapped = _lapack_batch_dims(train, "map", 4)
    vmapped = _lapack_batch_dims(train, "vmap", 4)
    assert len(mapped) == len(vmapped) > 0  # geqrf and orgqr of the layers, in both programs
    assert set(mapped) == {0}
    assert set(vmapped) == {1}


@pytest.mark.slow
def test_population_equals_agents_trained_alone():
    train = _tiny_train()
    keys, hp, _ = population_grid(train.trainer.default_hparams(), [3, 5], lr=[3e-4, 3e-3])
    runner, metrics = train_population(train, keys, hp, sharded=False)
    assert runner.params is not None and metrics["value_loss"].shape == (4, train.trainer.config.num_updates)
    single = jax.jit(train)
    for p in (0, 3):
        alone_runner, alone_metrics = single(jnp.asarray(keys[p]), jax.tree.map(lambda x: jnp.asarray(x[p]), hp))
        for a, b in zip(jax.tree.leaves(alone_runner.params), jax.tree.leaves(runner.params)):
            np.testing.assert_allclose(np.asarray(b)[p], np.asarray(a), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(metrics["reward"])[p], np.asarray(alone_metrics["reward"]),
                                   rtol=1e-4, atol=1e-5)
    # a second call with other keys runs the cached program
    train_population(train, keys[::-1].copy(), hp, sharded=False)
    assert len(train._population_fns) == 1
    with pytest.raises(ValueError, match="init"):
        train_population(train, keys, hp, sharded=False, init="scan")


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory):
    path = tmp_path_factory.mktemp("plain") / "plain.npz"
    proc = _run([str(path), "plain"], devices=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _load(path)


@pytest.mark.slow
def test_sharded_population_equals_unsharded(tmp_path, unsharded):
    sharded = tmp_path / "sharded.npz"
    proc = _run([str(sharded), "sharded"], devices=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _load(sharded), unsharded
    assert int(a["devices"]) == 4
    assert a.keys() == b.keys()
    for name in b:
        if name == "devices":
            continue
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # the population really differs between agents (seeds and learning rates)
    assert not np.allclose(a["p0"][0], a["p0"][1])


@pytest.mark.slow
def test_two_process_distributed_population(tmp_path, unsharded):
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "dist.npz"
    procs = [subprocess.Popen([sys.executable, WORKER, str(out), "sharded", f"localhost:{port}", "2", str(i)],
                              env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        results = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-3000:]
        assert "of 2 done on 4 devices" in stdout
    a, b = _load(out), unsharded
    assert int(a["devices"]) == 4
    for name in b:
        if name != "devices":
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
