"""A training run on disk: config, metrics (JSON Lines), checkpoints, resume, and loading the policy.

``RUN_DIR/config.json``   ``{"env": EnvSpec, "ppo": PPOConfig, "seed": int}`` (a resumed run must match)
``RUN_DIR/metrics.jsonl`` one JSON object per update: update, env_steps, wall_s and every metric
``RUN_DIR/checkpoints/``  orbax checkpoints of the runner state, every ``checkpoint_every`` updates and at the end

The updates run in jitted chunks that end at multiples of ``log_every`` and ``checkpoint_every``
(absolute update numbers), so a run resumed from a checkpoint goes through exactly the same chunks,
keys and arithmetic as an uninterrupted one and ends with the same parameters.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

from jaxsplit import atomic
from jaxsplit.envs import EnvSpec

from . import checkpoint
from .ppo import PPOConfig, RunnerState, Trainer, deferred_checks


def run_config_json(config: PPOConfig, spec: EnvSpec | None, seed: int) -> dict[str, Any]:
    """What ``RUN_DIR/config.json`` holds: the environment spec (None for an environment passed as an
    object), the PPO settings and the seed."""
    return {"env": None if spec is None else spec.to_json(), "ppo": config.to_json(), "seed": int(seed)}


def _boundaries(start: int, total: int, log_every: int, checkpoint_every: int) -> list[int]:
    ends = {total}
    ends.update(range(log_every, total, log_every))
    ends.update(range(checkpoint_every, total, checkpoint_every))
    return sorted(e for e in ends if e > start)


def _environment(spec: EnvSpec | None, env: Any, env_params: Any) -> tuple[Any, Any]:
    if env is not None:
        return env, env.default_params() if env_params is None else env_params
    if spec is None:
        raise ValueError("a run needs an environment: pass spec (an EnvSpec) or env and env_params")
    return spec.make()


#: Everything a run writes into its folder (``jaxsplit train``); a fresh run refuses a folder holding any.
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints", "evaluation.json", "report.md", "training_curve.png",
             "latency_vs_load.png")


#: The lock file of a run folder: held (``flock``) by the one process that writes the run; it holds
#: that process's pid, host and start time (Unix seconds) as JSON, to name the owner when refused.
LOCK_FILE = ".lock"
#: Folders a run writes beside the old run's files (``--overwrite``) and then swaps in; a leftover one
#: (its process was interrupted) is removed by the next process that holds the lock.
STAGE_PREFIX, REPLACED_PREFIX = ".overwrite-", ".replaced-"
#: run folders (resolved) whose lock this process holds -> [fd, depth] (the lock is reentrant)
_HELD: dict[str, list[int]] = {}


def _lock_owner(path: Path) -> str:
    try:
        owner = json.loads(path.read_text() or "{}")
        return f"pid {owner['pid']} on {owner['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "owner unknown"


@contextlib.contextmanager
def run_lock(run_dir: str | Path, option: str = "--out") -> Iterator[Path]:
    """Hold the run folder's lock file while the body runs; the folder is made when missing.

    One process at a time writes a run: a second one (another ``train``, a ``--resume``) is refused
    with ValueError naming the owner's pid and host. The lock is an ``flock`` on
    ``RUN_DIR/.lock``, released by the kernel when its process ends however it ends, so the lock of
    a process that died (killed, crashed, Ctrl-C) is free and taken over by the next one. Reentrant
    within a process."""
    path = Path(run_dir)
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    import fcntl

    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ValueError(f"{option} {str(run_dir)!r}: cannot write there ({err.strerror or type(err).__name__})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ValueError(f"{option} {str(run_dir)!r} is in use by another jaxsplit process "
                         f"({_lock_owner(path / LOCK_FILE)}); wait for it to end or choose another {option}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": round(time.time(), 3)}).encode() + b"\n", 0)
        for stale in path.iterdir():  # what an interrupted --overwrite left (no process holds it now)
            if stale.name.startswith((STAGE_PREFIX, REPLACED_PREFIX)) and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        _HELD[key] = [fd, 1]
        yield path
    finally:
        _HELD.pop(key, None)
        os.close(fd)  # releases the flock; the file stays (removing it would race a waiting process)


def replace_run(stage: str | Path, run_dir: str | Path) -> None:
    """Swap a run written in ``stage`` in for the run files of ``run_dir`` (:data:`RUN_FILES` only;
    the user's other files stay), then remove ``stage``. Each move is a rename; Ctrl-C waits until
    the swap is done (:func:`jaxsplit.atomic.uninterrupted`)."""
    stage, run_dir = Path(stage), Path(run_dir)
    trash = run_dir / f"{REPLACED_PREFIX}{os.getpid()}"
    with atomic.uninterrupted():
        shutil.rmtree(trash, ignore_errors=True)
        trash.mkdir()
        for name in RUN_FILES:
            if (run_dir / name).exists() or (run_dir / name).is_symlink():
                os.replace(run_dir / name, trash / name)
        for name in RUN_FILES:
            if (stage / name).exists():
                os.replace(stage / name, run_dir / name)
    shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(stage, ignore_errors=True)


def holds_run(run_dir: str | Path) -> list[str]:
    """The run files (:data:`RUN_FILES`) present in ``run_dir``."""
    path = Path(run_dir)
    return [name for name in RUN_FILES if (path / name).exists()] if path.is_dir() else []


def check_run_dir(run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """The run folder as a Path, refused (ValueError naming ``--out``) when it is empty, a file, under a
    file, or (a fresh run without ``overwrite``) holds anything a run writes. With ``overwrite`` the
    run's own files (:data:`RUN_FILES`, nothing else) are removed."""
    if str(run_dir).strip() == "":
        raise ValueError("--out: an empty path; name a run folder")
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {str(run_dir)!r} is a file, not a folder")
    for parent in path.absolute().parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"--out {str(run_dir)!r}: {str(parent)!r} is a file, not a folder")
    if resume or not path.is_dir():
        return path
    present = [name for name in RUN_FILES if (path / name).exists()]
    if "checkpoints" in present and checkpoint.latest_step(path) is not None and not overwrite:
        raise ValueError(f"--out {path} already holds a checkpoint; pass --resume to continue it "
                         f"or choose another --out")
    if present and not overwrite:
        raise ValueError(f"--out {path} already holds {', '.join(present)} of another run; pass --resume to "
                         f"continue it, --overwrite to replace it, or choose another --out")
    for name in present:
        target = path / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return path


def train_run(config: PPOConfig, run_dir: str | Path, spec: EnvSpec | None = None, seed: int = 0,
              resume: bool = False, log_every: int = 5, checkpoint_every: int = 50, env: Any = None,
              env_params: Any = None, on_chunk: Callable[[dict[str, Any]], None] | None = None,
              overwrite: bool = False) -> tuple[Trainer, RunnerState]:
    """Train (or resume) a run in ``run_dir``; returns the trainer and the final runner state.

    The environment is ``spec.make()`` (recorded in config.json, so that the run folder alone can be
    evaluated later), or ``env`` and ``env_params`` as given (then config.json records no spec).
    Raises ValueError when ``run_dir`` is refused by :func:`check_run_dir` (a fresh run into a folder
    holding a run's files without ``overwrite``: nothing is overwritten), when another process holds
    the folder (:func:`run_lock`), when ``resume`` finds a checkpoint it cannot read, or when its
    configuration differs; a run stopped before its first checkpoint resumes from the start. Every
    file is written atomically.
    ``on_chunk`` receives the last metrics row of each chunk (for progress display).
    """
    for name, value in (("log_every", log_every), ("checkpoint_every", checkpoint_every)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    check_run_dir(run_dir, resume=True)  # the path alone: empty, a file, under a file
    env, env_params = _environment(spec, env, env_params)  # a bad setting fails before anything is touched
    with run_lock(run_dir):
        return _train_run(config, check_run_dir(run_dir, resume, overwrite=overwrite), spec, seed, resume, log_every,
                          checkpoint_every, env, env_params, on_chunk)


def _train_run(config: PPOConfig, run_dir: Path, spec: EnvSpec | None, seed: int, resume: bool, log_every: int,
               checkpoint_every: int, env: Any, env_params: Any,
               on_chunk: Callable[[dict[str, Any]], None] | None) -> tuple[Trainer, RunnerState]:
    trainer = Trainer(config, env, env_params)
    hp = trainer.default_hparams()
    init = jax.jit(trainer.init)
    key = jax.random.PRNGKey(seed)
    config_path, metrics_path = run_dir / "config.json", run_dir / "metrics.jsonl"
    saved = run_config_json(config, spec, seed)
    if resume:
        if not config_path.exists():
            raise ValueError(f"--resume: {run_dir} holds no run to continue (no config.json); start it without "
                             f"--resume")
        old = json.loads(config_path.read_text())
        for part in ("env", "ppo"):
            new_part, old_part = saved[part] or {}, old.get(part) or {}
            for name in sorted(set(new_part) | set(old_part)):
                if new_part.get(name) != old_part.get(name):
                    raise ValueError(f"--resume: {name}={new_part.get(name)!r} differs from the run's "
                                     f"{old_part.get(name)!r}")
        if old.get("seed") != seed:
            raise ValueError(f"--resume: seed={seed} differs from the run's {old.get('seed')!r}")
        if checkpoint.latest_step(run_dir) is None:  # stopped before its first checkpoint: start it again
            runner, start = init(key, hp), 0
        else:
            runner, start = checkpoint.restore(run_dir, jax.eval_shape(init, key, hp))
        kept = [atomic.dumps(r) for r in read_metrics(run_dir) if r["update"] <= start]
        atomic.write_text(metrics_path, "".join(r + "\n" for r in kept))
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(config_path, atomic.dumps(saved, indent=2) + "\n")
        atomic.write_text(metrics_path, "")
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
            lines = []
            for i in range(end - done):
                row = {"update": done + i + 1, "env_steps": (done + i + 1) * config.batch_size,
                       "wall_s": round(wall, 3), **{k: float(v[i]) for k, v in metrics.items()}}
                lines.append(atomic.dumps(row))
            atomic.append_lines(metrics_path, lines)
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
    rows = []
    lines = path.read_text().splitlines() if path.exists() else []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if k == len(lines) - 1:  # a line torn by a crash inside the last append
                break
            raise ValueError(f"{path}: line {k + 1} is not JSON (the file is corrupt)") from None
    return rows


def read_config(run_dir: str | Path) -> tuple[EnvSpec | None, PPOConfig, int]:
    """The environment spec, PPO settings and seed saved in ``RUN_DIR/config.json`` (ValueError naming
    the file when it is missing or unreadable)."""
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
        spec = None if saved.get("env") is None else EnvSpec.from_json(saved["env"])
        with deferred_checks():  # checked below, with the file named in the error
            config = PPOConfig.from_json(saved["ppo"])
        seed = int(saved.get("seed", 0))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(f"--checkpoint {run_dir}: {config_path} is unreadable or corrupt "
                         f"({type(err).__name__}: {str(err)[:200]})") from None
    try:
        config.validate()
        if spec is not None:
            spec.overrides()
    except ValueError as err:
        raise ValueError(f"--checkpoint {run_dir}: {config_path}: {err}") from None
    return spec, config, seed


def load_run(run_dir: str | Path, env: Any = None, env_params: Any = None) -> tuple[Trainer, RunnerState]:
    """The trainer and the newest checkpointed runner state of a run (ValueError when unusable).

    The environment is the run's (its config.json spec) unless ``env`` is given."""
    run_dir = Path(run_dir)
    spec, config, _ = read_config(run_dir)
    if env is None and spec is None:
        raise ValueError(f"--checkpoint {run_dir}: the run was trained on an environment passed as an object; "
                         f"pass env and env_params to load it")
    env, env_params = _environment(spec, env, env_params)
    trainer = Trainer(config, env, env_params)
    if checkpoint.latest_step(run_dir) is None:
        raise ValueError(f"--checkpoint {run_dir}: no checkpoint in {checkpoint.checkpoint_dir(run_dir)} "
                         f"(the run saved none yet)")
    target = jax.eval_shape(trainer.init, jax.random.PRNGKey(0), trainer.default_hparams())
    runner, _ = checkpoint.restore(run_dir, target)
    return trainer, runner


def evaluation_env(run_dir: str | Path, requests: int | None = None, cluster: Sequence | None = None,
                   models: Sequence[str] | None = None,
                   params: dict[str, Any] | None = None) -> tuple[Any, Any, Any, Any]:
    """The environments in which to evaluate a run's policy against the baselines.

    Returns ``(policy_env, policy_params, baseline_env, baseline_params)``: the run's environment with
    its action wrapper, and the same environment without it, both with ``requests`` per episode, on
    ``cluster`` ((flops, bandwidth, latency) lists) when given, with the request mix restricted to
    ``models`` when given, and with the environment parameters ``params`` (e.g. devices_min,
    devices_max, churn, rejoin).

    A policy of the "sets" observation (the generalist, alloc-any-v0) reads each device as an item
    and each request by its model's work: it takes any cluster of up to the run's N devices and any
    catalogue. Any other policy reads one entry per device and per trained model: the cluster must
    have the run's N devices and ``models`` must be a subset of its catalogue (the mix gives the
    others probability 0, and the baselines run on the catalogue of ``models`` in the run's order, so
    both see the same requests). ValueError says what the policy cannot accept and why.
    """
    spec, _, _ = read_config(run_dir)
    if spec is None:
        raise ValueError(f"--checkpoint {run_dir}: the run was trained on an environment passed as an object, "
                         f"which cannot be rebuilt from its folder")
    try:
        trained, _ = spec.base()
    except ValueError as err:  # the saved spec is the run's: name its file
        raise ValueError(f"--checkpoint {run_dir}: {Path(run_dir) / 'config.json'}: {err}") from None
    extra: dict[str, Any] = dict(params or {})
    if requests is not None:
        extra["requests"] = int(requests)
    general = getattr(trained, "layout", None) is not None
    if cluster is not None and general:
        if len(cluster[0]) > trained.num_devices:
            raise ValueError(f"--checkpoint {run_dir}: the policy serves clusters of up to {trained.num_devices} "
                             f"devices (the run's N), but the evaluation cluster has {len(cluster[0])}")
        extra["cluster"] = cluster
    elif cluster is not None:
        if len(cluster[0]) != trained.num_devices:
            raise ValueError(f"--checkpoint {run_dir}: the policy was trained for {trained.num_devices} devices "
                             f"(its network reads each device's features), but the evaluation cluster has "
                             f"{len(cluster[0])}")
        extra["cluster"] = cluster
    base_extra = dict(extra)
    policy_extra = dict(extra)
    if models is not None and general:
        base_extra["models"] = policy_extra["models"] = tuple(models)
    elif models is not None:
        outside = [m for m in models if m not in trained.models]
        if outside:
            raise ValueError(f"--checkpoint {run_dir}: model {outside[0]!r} is not in the policy's training "
                             f"catalogue ({','.join(trained.models)}): its observation has no entry for it")
        chosen = set(models)
        base_extra["models"] = tuple(m for m in trained.models if m in chosen)
        policy_extra["mix"] = np.asarray([1.0 if m in chosen else 0.0 for m in trained.models])
    policy_env, policy_params = spec.make(**policy_extra)
    base_env, base_params = spec.base(**base_extra)
    return policy_env, policy_params, base_env, base_params


def load_policy(run_dir: str | Path, requests: int | None = None, cluster: Sequence | None = None,
                models: Sequence[str] | None = None,
                params: dict[str, Any] | None = None) -> tuple[Callable[[jax.Array, jax.Array], jax.Array], Any, Any]:
    """The trained deterministic policy of a run folder, ready for :func:`jaxsplit.envs.evaluate`:
    ``(policy_fn(key, obs) -> action, env, params)`` with the environment of :func:`evaluation_env`."""
    policy_env, policy_params, _, _ = evaluation_env(run_dir, requests, cluster, models, params)
    trainer, runner = load_run(run_dir)
    return trainer.policy(runner), policy_env, policy_params
