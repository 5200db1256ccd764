"""A training run on disk: config, metrics (JSON Lines), checkpoints, resume, and loading the policy.

``RUN_DIR/config.json``   the PPOConfig of the run (a resumed run must use the same one)
``RUN_DIR/metrics.jsonl`` one JSON object per update: update, env_steps, wall_s and every metric
``RUN_DIR/checkpoints/``  orbax checkpoints of the runner state, every ``checkpoint_every`` updates and at the end

The updates run in jitted chunks that end at multiples of ``log_every`` and ``checkpoint_every``
(absolute update numbers), so a run resumed from a checkpoint goes through exactly the same chunks,
keys and arithmetic as an uninterrupted one and ends with the same parameters.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from . import checkpoint
from .ppo import PPOConfig, RunnerState, Trainer


def config_to_json(config: PPOConfig) -> dict[str, Any]:
    """The config as a JSON-ready dict."""
    out = dataclasses.asdict(config)
    out["hidden"] = list(config.hidden)
    out["pair_levels"] = list(config.pair_levels)
    out["env_overrides"] = [[k, list(v) if isinstance(v, tuple) else v] for k, v in config.env_overrides]
    return out


def config_from_json(data: dict[str, Any]) -> PPOConfig:
    """Inverse of :func:`config_to_json`; unknown fields raise ValueError."""
    names = {f.name for f in dataclasses.fields(PPOConfig)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"config.json has unknown fields {sorted(unknown)}")
    data = dict(data)
    data["hidden"] = tuple(data.get("hidden", (64, 64)))
    data["pair_levels"] = tuple(data.get("pair_levels", ()))
    data["env_overrides"] = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in data.get("env_overrides", ()))
    return PPOConfig(**data)


def _boundaries(start: int, total: int, log_every: int, checkpoint_every: int) -> list[int]:
    ends = {total}
    ends.update(range(log_every, total, log_every))
    ends.update(range(checkpoint_every, total, checkpoint_every))
    return sorted(e for e in ends if e > start)


def train_run(config: PPOConfig, run_dir: str | Path, seed: int = 0, resume: bool = False, log_every: int = 5,
              checkpoint_every: int = 50, env: Any = None, env_params: Any = None,
              on_chunk: Callable[[dict[str, Any]], None] | None = None) -> tuple[Trainer, RunnerState]:
    """Train (or resume) a run in ``run_dir``; returns the trainer and the final runner state.

    Raises ValueError when ``run_dir`` already holds a checkpoint and ``resume`` is False (nothing is
    overwritten), when ``resume`` finds no readable checkpoint, or when its config differs.
    ``on_chunk`` receives the last metrics row of each chunk (for progress display).
    """
    for name, value in (("log_every", log_every), ("checkpoint_every", checkpoint_every)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    run_dir = Path(run_dir)
    trainer = Trainer(config, env, env_params)
    hp = trainer.default_hparams()
    init = jax.jit(trainer.init)
    key = jax.random.PRNGKey(seed)
    config_path, metrics_path = run_dir / "config.json", run_dir / "metrics.jsonl"
    saved = {"config": config_to_json(config), "seed": seed}
    if resume:
        if not config_path.exists():
            raise ValueError(f"--resume: {config_path} does not exist")
        old = json.loads(config_path.read_text())
        for name, value in saved["config"].items():
            if old.get("config", {}).get(name) != value:
                raise ValueError(f"--resume: {name}={value!r} differs from the run's {old.get('config', {}).get(name)!r}")
        if old.get("seed") != seed:
            raise ValueError(f"--resume: seed={seed} differs from the run's {old.get('seed')!r}")
        runner, start = checkpoint.restore(run_dir, jax.eval_shape(init, key, hp))
        rows = metrics_path.read_text().splitlines() if metrics_path.exists() else []
        metrics_path.write_text("".join(r + "\n" for r in rows if json.loads(r)["update"] <= start))
    else:
        if checkpoint.latest_step(run_dir) is not None:
            raise ValueError(f"--out {run_dir} already holds a checkpoint; pass --resume to continue it "
                             f"or choose another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps(saved, indent=2) + "\n")
        metrics_path.write_text("")
        runner, start = init(key, hp), 0

    run = jax.jit(trainer.run, static_argnums=2)
    manager = checkpoint.open_manager(run_dir)
    t0 = time.perf_counter()
    done = start
    try:
        for end in _boundaries(start, config.num_updates, log_every, checkpoint_every):
            runner, metrics = run(runner, hp, end - done)
            metrics = jax.device_get(metrics)
            wall = time.perf_counter() - t0
            with metrics_path.open("a") as fh:
                for i in range(end - done):
                    row = {"update": done + i + 1, "env_steps": (done + i + 1) * config.batch_size,
                           "wall_s": round(wall, 3), **{k: float(v[i]) for k, v in metrics.items()}}
                    fh.write(json.dumps(row) + "\n")
            if on_chunk is not None:
                on_chunk(row)
            done = end
            if end % checkpoint_every == 0 or end == config.num_updates:
                checkpoint.save(manager, end, runner)
    finally:
        manager.close()
    return trainer, runner


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """The rows of ``RUN_DIR/metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def read_config(run_dir: str | Path) -> tuple[PPOConfig, int]:
    """The PPOConfig and seed saved in ``RUN_DIR/config.json`` (ValueError when missing or unreadable)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ValueError(f"--checkpoint {run_dir}: no such directory")
    if not run_dir.is_dir():
        raise ValueError(f"--checkpoint {run_dir}: not a directory")
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise ValueError(f"--checkpoint {run_dir}: no config.json (not a training run folder)")
    try:
        saved = json.loads(config_path.read_text())
        config = config_from_json(saved["config"])
        seed = int(saved.get("seed", 0))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"--checkpoint {run_dir}: config.json is unreadable or corrupt "
                         f"({type(err).__name__}: {str(err)[:200]})") from None
    return config, seed


def load_run(run_dir: str | Path, env: Any = None, env_params: Any = None) -> tuple[Trainer, RunnerState]:
    """The trainer and the newest checkpointed runner state of a run (ValueError when unusable)."""
    run_dir = Path(run_dir)
    config, _ = read_config(run_dir)
    trainer = Trainer(config, env, env_params)
    if checkpoint.latest_step(run_dir) is None:
        raise ValueError(f"--checkpoint {run_dir}: no checkpoint in {checkpoint.checkpoint_dir(run_dir)} "
                         f"(the run saved none yet)")
    target = jax.eval_shape(trainer.init, jax.random.PRNGKey(0), trainer.default_hparams())
    runner, _ = checkpoint.restore(run_dir, target)
    return trainer, runner


def load_policy(run_dir: str | Path, num_devices: int | None = None, obs_dim: int | None = None
                ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The trained deterministic policy ``policy_fn(key, obs) -> shares`` of a run folder.

    ``num_devices`` / ``obs_dim``, when given, must match the run's environment (else ValueError).
    """
    trainer, runner = load_run(run_dir)
    if num_devices is not None and num_devices != trainer.env.num_devices:
        raise ValueError(f"--checkpoint {run_dir}: the policy was trained for {trainer.env.num_devices} devices, "
                         f"not {num_devices}")
    if obs_dim is not None and obs_dim != trainer.env.obs_dim:
        raise ValueError(f"--checkpoint {run_dir}: observation size {obs_dim} differs from the run's "
                         f"{trainer.env.obs_dim}")
    return trainer.policy(runner)


def checkpoint_loader(run_dir: str, env_name: str, overrides: dict[str, Any]
                      ) -> tuple[str, Any, Any, Callable[[jax.Array, jax.Array], jax.Array]]:
    """The trained policy of a run folder for ``jaxsplit evaluate --checkpoint RUN_DIR``.

    The policy is evaluated in the evaluation environment ``jaxsplit.envs.make(env_name, **overrides)``
    (the one the baselines run in: ``--env``, ``--cluster``, ``--models``, ``--requests``). Its number of
    devices and its catalogue (the observation's model one-hot) must be the run's, else ValueError
    naming both. Returns ``("ppo", env, params, policy_fn)`` with the deterministic policy (:meth:`Trainer.policy`).
    """
    from jaxsplit import envs

    from .ppo import make_env

    config, _ = read_config(run_dir)
    trained_env, trained_params = make_env(config)
    # same dynamics and episodes as the baselines' environment; the observation the policy was trained on
    env, params = envs.make(env_name, **{**overrides, "observation": trained_env.observation_kind})
    where = "the --cluster file" if overrides.get("cluster") is not None else f"--env {env_name}"
    if trained_env.num_devices != env.num_devices:
        raise ValueError(f"--checkpoint {run_dir}: the policy was trained for {trained_env.num_devices} devices, "
                         f"but the evaluation cluster ({where}) has {env.num_devices}")
    if tuple(trained_env.models) != tuple(env.models):
        raise ValueError(f"--checkpoint {run_dir}: the policy was trained on the catalogue "
                         f"{','.join(trained_env.models)}, not {','.join(env.models)} (pass --models "
                         f"{','.join(trained_env.models)})")
    trainer, runner = load_run(run_dir, trained_env, trained_params)
    return "ppo", env, params, trainer.policy(runner)


def _register() -> None:
    """Make ``jaxsplit evaluate --checkpoint`` use :func:`checkpoint_loader` (once)."""
    from jaxsplit.envs.evaluate_cli import register_checkpoint_loader

    register_checkpoint_loader(checkpoint_loader)


_register()
