"""Hyperparameter sweeps as populations: Optuna proposes, one compiled population trains.

A sweep asks Optuna for a batch of trials (``study.ask``), trains them together as one population
(each trial as ``seeds`` members, every member a different seed or setting, one jitted and vmapped
program sharded over the local devices: :class:`~jaxsplit.agents.population.PopulationRunner`),
evaluates every member on the same episodes through the one evaluation path
(:func:`jaxsplit.envs.evaluation.run_episodes`), and tells Optuna each trial's objective: the mean
latency over the sweep's loads, lower is better. The population's program is compiled once per
worker, whatever the trials' values, since every searched setting is traced.

The study lives in an Optuna RDB storage (an SQLite file in the sweep folder by default, or any
database URL such as ``postgresql://``), which any number of workers share: each worker pulls its
next batch from the study and trains it on its own devices. Workers record a heartbeat for the trials
they train; a trial whose worker stopped beating for ``grace`` seconds is marked failed by the next
worker that looks, and its parameters are queued again, so it is trained once more and never counted
twice. Ctrl-C (or SIGTERM) marks the running trials failed and queues them again; the population's
newest checkpoint (every chunk of updates, ``populations/``) lets the next run resume it where it
stopped.

The sweep folder::

    study.db           the Optuna study (default storage)
    trials.jsonl       one line per trial: number, state, params, seeds, per-load latency with its
                       interval, objective, env steps, wall time, worker (and PBT lineage)
    leaderboard.md     the best trials against the best baseline at each load
    baselines.json     every baseline on the sweep's evaluation episodes
    objective.png      the objective against each searched setting
    history.png        each trial's objective and the best so far
    importance.png     Optuna's parameter importance (two or more searched settings)
    best -> runs/trial-N   a run folder of the best trial (its first seed): ``jaxsplit evaluate --checkpoint``
    runs/, populations/    run folders of trials that were best when they finished; population checkpoints

With ``schedule="pbt"`` a population is one PBT run (:mod:`jaxsplit.agents.pbt`): each member is a
trial, whose parameters Optuna proposes at the start; between chunks the worst members copy the best
and perturb their settings; a trial's recorded ``final_params`` and ``lineage`` say where it ended.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxsplit import atomic
from jaxsplit.contract import check_seed  # noqa: F401
from jaxsplit.envs import EnvSpec, policies
from jaxsplit.envs.evaluation import Protocol, episode_metrics, evaluate, run_episodes, with_requests  # noqa: F401

from . import checkpoint
from .pbt import exploit_explore, member_values  # noqa: F401
from .population import PopulationRunner, gather, population_members
from .ppo import TRACED, PPOConfig, make_train  # noqa: F401
from .run import run_config_json  # noqa: F401
from .space import Dimension, check_space
# the parts of a worker; the names above and below marked noqa stay importable from this module for its callers
from .sweep_record import SweepRecord, trial_records  # noqa: F401
from .sweep_settings import SAMPLERS, SCHEDULES, SweepSettings  # noqa: F401
from .sweep_storage import (SweepStore, _retry_race, open_storage, restore_population, save_population,  # noqa: F401
                            storage_reason, storage_url, write_run)
from .sweep_trials import SweepTrials, _Grid, _grid_class, make_sampler, quiet_optuna  # noqa: F401

#: what every worker of a study must share (refused when it differs)
_FIXED = ("seeds", "schedule", "eval_loads", "eval_episodes", "eval_requests", "eval_warmup", "eval_seed", "seed", "sampler",
          "pbt_fraction", "pbt_perturb", "pbt_resample", "chunk")


class Sweep:
    """One worker of a sweep: :meth:`run` trains batches of trials until the study holds ``trials``
    complete ones (this worker's and the others').

    It composes the worker's parts: :class:`~jaxsplit.agents.sweep_trials.SweepTrials` (asking and
    telling the study), :class:`~jaxsplit.agents.sweep_storage.SweepStore` (the study's database and
    the population checkpoints) and :class:`~jaxsplit.agents.sweep_record.SweepRecord` (the trial
    records, baselines, leaderboard and plots); it trains and evaluates each batch itself."""

    def __init__(self, out: str | Path, spec: EnvSpec, config: PPOConfig, dims: Sequence[Dimension],
                 settings: SweepSettings, study: str = "sweep", storage: str | None = None,
                 baselines: Sequence[str] | None = None, devices: Sequence[Any] | None = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None):
        self.settings = settings.validate()
        config.validate()
        if not dims:
            raise ValueError("--space: give at least one dimension NAME=LOW:HIGH[:log] or NAME=v1,v2,...")
        self.out, self.spec, self.config, self.dims = Path(out), spec, config, tuple(dims)
        if str(out) == "":
            raise ValueError("--out: empty path")
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {str(out)!r}: exists and is not a directory")
        env, env_params = spec.make()
        check_space(self.dims, env_params)
        if settings.sampler == "grid":
            size = math.prod(len(d.choices or ()) for d in self.dims)
            make_sampler("grid", self.dims, 0)
            if settings.trials > size:
                raise ValueError(f"--trials {settings.trials}: the grid has only {size} points")
        self.baseline_names = tuple(policies.POLICIES if baselines is None else baselines)
        for name in self.baseline_names:
            if name not in policies.POLICIES:
                raise ValueError(f"--baselines: unknown baseline {name!r}; known: {', '.join(policies.POLICIES)}")
        self.devices = list(devices) if devices is not None else jax.local_devices()
        if settings.population % len(self.devices):
            raise ValueError(f"--population {settings.population} must be a multiple of the "
                             f"{len(self.devices)} local devices")
        self.study_name = study
        self.store = SweepStore(self.out, study, storage, settings.heartbeat)
        self.url = self.store.url
        self.default_storage = self.store.default_storage
        self.on_progress = on_progress
        self.env, self.env_params = env, env_params
        self._runner: PopulationRunner | None = None
        self._act: Callable | None = None
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.trials = SweepTrials(self.settings, self.dims, self.store, self.worker)
        self.record = SweepRecord(self.out, spec, self.settings, self.dims, self.baseline_names, study)

    @property
    def storage(self) -> Any:
        """The study's Optuna RDB storage, once :meth:`open_study` opened it (else None)."""
        return self.store.storage

    @storage.setter
    def storage(self, value: Any) -> None:
        self.store.storage = value

    # ----- the study -----------------------------------------------------------------------------

    def fixed(self) -> dict[str, Any]:
        """What every worker of this study must share: environment, PPO settings, space, scoring."""
        ppo = self.config.to_json()
        for d in self.dims:
            ppo.pop(d.name, None)
        sweep = {name: getattr(self.settings, name) for name in _FIXED}
        sweep["eval_loads"] = list(sweep["eval_loads"])
        if self.settings.schedule == "pbt":
            sweep["population"] = self.settings.population
        return {"env": self.spec.to_json(), "ppo": ppo, "space": [d.to_json() for d in self.dims], "sweep": sweep}

    def open_study(self) -> Any:
        """Open (or create) the study (:meth:`SweepStore.open_study
        <jaxsplit.agents.sweep_storage.SweepStore.open_study>`), and record this worker's fixed settings
        in it, or refuse it (ValueError) when they differ from the study's."""
        study = self.store.open_study()
        self.store.check_fixed(study, self.fixed(), self.dims)
        return study

    # ----- training ------------------------------------------------------------------------------

    def runner(self) -> PopulationRunner:
        """The population's compiled program, shared by every sweep of this process with the same
        environment, PPO settings and devices (so a second sweep, or a resumed one, compiles nothing)."""
        if self._runner is None:
            key = (self.spec, self.config, tuple(self.devices))
            if key not in _RUNNERS:
                train = make_train(self.config, self.env, self.env_params)
                _RUNNERS[key] = PopulationRunner(train, sharded=True,
                                                 mesh=jax.sharding.Mesh(np.asarray(self.devices), ("pop",)))
            self._runner = _RUNNERS[key]
        return self._runner

    def member_rows(self, batch: Sequence[Any]) -> list[dict[str, Any]]:
        """One row per member: the trial's parameters and a seed (padded to the population size)."""
        return self.trials.member_rows(batch)

    def train_batch(self, study: Any, batch: Sequence[Any]) -> None:
        """Train, evaluate and tell one batch; on an interruption the batch's trials are queued again."""
        rows = self.member_rows(batch)
        pop_dir = self.store.population_dir(batch)
        resumed = self.store.resumable(batch, rows)
        stop = threading.Event()
        beats = threading.Thread(target=self.trials.beat_loop, args=(batch, stop), daemon=True)
        beats.start()
        folder = pop_dir if resumed is None else resumed
        requeue = lambda: self.store.requeue(study, batch, folder, stop)
        try:
            # Ctrl-C on the command line exits from its own thread, at any moment: it queues the batch first
            with atomic.on_interrupt(requeue):
                t0 = time.perf_counter()
                runners, hparams, metrics, lineage = self._train(rows, folder, resumed is not None, len(batch))
                results = self._evaluate(runners)
                wall = time.perf_counter() - t0
                self._tell(study, batch, rows, runners, hparams, metrics, lineage, results, wall)
        except BaseException:
            requeue()
            raise
        finally:
            stop.set()
        shutil.rmtree(pop_dir if resumed is None else resumed, ignore_errors=True)

    def _train(self, rows: list[dict[str, Any]], pop_dir: Path, resume: bool, real: int
               ) -> tuple[Any, Any, dict[str, np.ndarray], list[list[int]]]:
        runner = self.runner()
        total = self.config.num_updates
        keys, hparams = population_members(runner.trainer.default_hparams(), rows)
        keys, hparams = runner.place((keys, hparams))
        runners = runner.init(keys, hparams)
        done, metrics, lineage, made = 0, {}, [], []  # made: the update after which each lineage entry came
        if resume:
            state, done, metrics, lineage, made = restore_population(pop_dir, runners, hparams)
            runners, hparams = runner.place(state["runners"]), runner.place(state["hparams"])
        else:
            pop_dir.mkdir(parents=True, exist_ok=True)
        manager = checkpoint.open_manager(pop_dir, max_to_keep=1)
        exploit = jax.jit(exploit_explore, static_argnames=("dims", "fraction", "perturb", "resample"))
        t0, start = time.perf_counter(), done
        try:
            while done < total:
                n = min(self.settings.chunk, total - done)
                runners, chunk = runner.run(runners, hparams, n)
                chunk = {k: np.asarray(v) for k, v in gather(chunk).items()}
                metrics = {k: np.concatenate([metrics[k], v], 1) if k in metrics else v for k, v in chunk.items()}
                done += n
                if self.settings.schedule == "pbt" and done < total:
                    runners, hparams = self._exploit(exploit, done, chunk, runners, hparams, lineage)
                    made.append(done)
                if manager is not None:
                    save_population(manager, pop_dir, done, runners, hparams, metrics, rows, lineage, made)
                if self.on_progress is not None:
                    rate = (done - start) * self.config.batch_size * len(rows) / max(time.perf_counter() - t0, 1e-9)
                    self.on_progress({"event": "chunk", "update": done, "updates": total, "steps_per_s": rate, "trials": real})
        finally:
            if manager is not None:
                manager.close()
        return runners, hparams, metrics, lineage

    def _exploit(self, exploit: Callable, done: int, chunk: dict[str, np.ndarray], runners: Any, hparams: Any,
                 lineage: list[list[int]]) -> tuple[Any, Any]:
        """PBT's exploit and explore (``exploit``, jitted) after ``done`` updates; each member's source
        appended to ``lineage``."""
        key = jax.random.fold_in(jax.random.PRNGKey(self.settings.seed), done)
        runners, hparams, source = exploit(key, chunk["reward"].mean(1), runners, hparams,
                                           dims=self.dims, fraction=self.settings.pbt_fraction,
                                           perturb=self.settings.pbt_perturb, resample=self.settings.pbt_resample)
        lineage.append([int(s) for s in gather(source)])
        return runners, hparams

    def eval_env(self) -> tuple[Any, Any]:
        return with_requests(self.runner().trainer.env, self.settings.eval_requests), self.env_params

    def _evaluate(self, runners: Any) -> dict[str, np.ndarray]:
        """Per-episode metrics of every member's deterministic policy, (P, loads, episodes) each."""
        env, params = self.eval_env()
        self._act = self._act or _ACTS.get(id(self.runner()))
        if self._act is None:  # one function object per program, so that the evaluation compiles once
            policy = self.runner().trainer.policy

            def act(key, obs, state, env_params, aux):
                net_params, obs_stats = aux
                return policy(_Policy(net_params, obs_stats))(key, obs)

            self._act = _ACTS[id(self.runner())] = act
        act = self._act
        aux = jax.device_get((runners.params, runners.obs_stats))
        recs = run_episodes(env, params, act, self.settings.eval_loads, self.settings.eval_episodes,
                            seed=self.settings.eval_seed, aux=aux)
        return episode_metrics(recs, int(self.settings.eval_warmup * env.requests))

    def _tell(self, study: Any, batch: Sequence[Any], rows: list[dict[str, Any]], runners: Any, hparams: Any,
              metrics: dict[str, np.ndarray], lineage: list[list[int]], results: dict[str, np.ndarray],
              wall: float) -> None:
        """Tell the batch's objectives; the run folder of the study's best trial when it is one of them."""
        k = self.settings.seeds
        steps = self.config.num_updates * self.config.batch_size
        best = self.trials.tell(study, batch, rows, hparams, lineage, results, wall, steps)
        if best is not None:
            trial, i = best
            self.write_run(trial, rows[i * k], runners, hparams, metrics, i * k)

    def write_run(self, trial: Any, row: dict[str, Any], runners: Any, hparams: Any,
                  metrics: dict[str, np.ndarray], member: int) -> Path:
        """A run folder (like ``jaxsplit train``'s) of one member, and ``best`` pointing at it."""
        return write_run(self.out, trial, row, runners, hparams, metrics, member, self.config, self.spec, self.dims)

    # ----- the worker loop -----------------------------------------------------------------------

    def run(self) -> Any:
        """Train batches until the study holds ``trials`` complete trials; returns the study."""
        from optuna.trial import TrialState

        quiet_optuna()
        study = self.open_study()
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if done >= self.settings.trials:
            raise NothingToDo(f"study {self.study_name!r} already holds {done} complete trials (--trials "
                              f"{self.settings.trials}): nothing to do; raise --trials to continue it")
        self.out.mkdir(parents=True, exist_ok=True)
        baselines = self.baselines()
        while True:
            batch = self.trials.next_batch(study)
            if batch is None:
                break
            self.train_batch(study, batch)
            self.write_files(study, baselines)
            self.record.report(study, self.on_progress)
        self.write_files(study, baselines)
        return study

    def baselines(self) -> list[dict[str, Any]]:
        """Every baseline on the sweep's evaluation episodes (cached in baselines.json)."""
        return self.record.baselines()

    def write_files(self, study: Any, baselines: list[dict[str, Any]]) -> None:
        """trials.jsonl, the leaderboard and the plots, from the study as it is now."""
        self.record.write_files(study, baselines)


#: compiled population programs and evaluation functions, per (spec, config, devices) (see Sweep.runner)
_RUNNERS: dict[tuple, PopulationRunner] = {}
_ACTS: dict[int, Callable] = {}


class NothingToDo(Exception):
    """The study already holds the requested number of complete trials."""


@dataclass
class _Policy:
    params: Any
    obs_stats: Any
