"""Runs on disk: resume gives exactly the uninterrupted parameters; bad checkpoints fail clearly."""

from __future__ import annotations

import json
import shutil

import chex
import jax
import numpy as np
import pytest

from jaxsplit.agents import checkpoint
from jaxsplit.agents.ppo import PPOConfig
from jaxsplit.agents.run import read_config, read_metrics, run_config_json, train_run
from tiny_env import TinyEnv

CONFIG = PPOConfig(num_envs=8, num_steps=16, num_minibatches=2, total_timesteps=8 * 16 * 6)


def _train(run_dir, config=CONFIG, **kw):
    env = TinyEnv()
    return train_run(config, run_dir, env=env, env_params=env.default_params(), log_every=1,
                     checkpoint_every=2, **kw)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    _, runner = _train(run_dir)
    return run_dir, runner


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(full_run, tmp_path):
    run_dir, runner = full_run
    assert read_config(run_dir) == (None, CONFIG, 0)  # an environment passed as an object: no spec recorded
    assert checkpoint.latest_step(run_dir) == 6
    assert [r["update"] for r in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
    # an interrupted copy: keep only the checkpoint at update 4 and metrics beyond it (as after a crash)
    part = tmp_path / "part"
    shutil.copytree(run_dir, part)
    shutil.rmtree(part / "checkpoints" / "6")
    _, resumed = _train(part, resume=True)
    chex.assert_trees_all_equal(resumed.params, runner.params)
    chex.assert_trees_all_equal(resumed.opt_state, runner.opt_state)
    assert [r["update"] for r in read_metrics(part)] == [1, 2, 3, 4, 5, 6]
    assert read_metrics(part)[-1]["reward"] == read_metrics(run_dir)[-1]["reward"]


@pytest.mark.slow
def test_fresh_run_never_overwrites_a_checkpoint(full_run):
    run_dir, _ = full_run
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        _train(run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before


def test_resume_without_checkpoint_is_a_clear_error_or_starts_again(full_run, tmp_path):
    with pytest.raises(ValueError, match="holds no run to continue"):
        _train(tmp_path / "nothing", resume=True)
    # stopped before its first checkpoint (config.json written, nothing else): it starts again
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(run_config_json(CONFIG, None, 0)))
    _, resumed = _train(run_dir, resume=True)
    chex.assert_trees_all_equal(resumed.params, full_run[1].params)
    assert [r["update"] for r in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_resume_with_another_config_is_refused(full_run, tmp_path):
    run_dir, _ = full_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    with pytest.raises(ValueError, match="lr"):
        _train(copy, config=PPOConfig(**{**CONFIG.__dict__, "lr": 2e-3}), resume=True)


@pytest.mark.slow
def test_corrupt_checkpoint_is_a_clear_error_and_kept(full_run, tmp_path):
    run_dir, _ = full_run
    copy = tmp_path / "corrupt"
    shutil.copytree(run_dir, copy)
    for path in (copy / "checkpoints" / "6").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(b"garbage")
    files = sorted(str(p) for p in (copy / "checkpoints").rglob("*"))
    with pytest.raises(ValueError, match="unreadable or corrupt"):
        _train(copy, resume=True)
    assert sorted(str(p) for p in (copy / "checkpoints").rglob("*")) == files


def test_bad_chunk_settings_raise():
    with pytest.raises(ValueError, match="checkpoint_every"):
        train_run(CONFIG, "/nonexistent", env=TinyEnv(), env_params=TinyEnv().default_params(), checkpoint_every=0)
