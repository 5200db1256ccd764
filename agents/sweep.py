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

import contextlib
import dataclasses
import json
import math
import os
import shutil
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import jax
import numpy as np

from jaxsplit import atomic
from jaxsplit.contract import check_seed
from jaxsplit.envs import EnvSpec, policies
from jaxsplit.envs.evaluation import Protocol, episode_metrics, evaluate, run_episodes, with_requests

from . import checkpoint
from .pbt import exploit_explore, member_values
from .population import PopulationRunner, gather, population_members
from .ppo import TRACED, PPOConfig, make_train
from .run import run_config_json
from .space import Dimension, check_space

SAMPLERS = ("tpe", "random", "cmaes", "grid")
SCHEDULES = ("none", "pbt")
#: what every worker of a study must share (refused when it differs)
_FIXED = ("seeds", "schedule", "eval_loads", "eval_episodes", "eval_requests", "eval_warmup", "eval_seed", "seed", "sampler",
          "pbt_fraction", "pbt_perturb", "pbt_resample", "chunk")


@dataclass(frozen=True)
class SweepSettings:
    """How a sweep searches and scores (the fixed PPO and environment settings live apart)."""

    trials: int = 32
    """complete trials wanted in the study, all workers together"""
    population: int = 8
    """members trained at once (a multiple of --seeds and of the local device count)"""
    seeds: int = 1
    """seeds per trial (its members); the objective is their mean"""
    sampler: Literal["tpe", "random", "cmaes", "grid"] = "tpe"
    """how Optuna proposes trials (grid: every dimension a list)"""
    schedule: Literal["none", "pbt"] = "none"
    """none: each trial trains with its own settings; pbt: population-based training within each population"""
    eval_loads: tuple[float, ...] = dataclasses.field(default_factory=lambda: Protocol().loads)
    """offered loads of the objective (mean latency over them)"""
    eval_episodes: int = dataclasses.field(default_factory=lambda: Protocol().episodes)
    """evaluation episodes per load and member"""
    eval_requests: int = dataclasses.field(default_factory=lambda: Protocol().requests)
    """requests per evaluation episode"""
    eval_warmup: float = dataclasses.field(default_factory=lambda: Protocol().warmup)
    """fraction of each evaluation episode's first requests left out of the metrics"""
    eval_seed: int = dataclasses.field(default_factory=lambda: Protocol().seed)
    """seed of the evaluation episodes (the same for every trial and baseline)"""
    seed: int = 0
    """seed of each trial's first member (the others: seed + 1, ...) and of the sampler"""
    chunk: int = 10
    """updates per jitted chunk: progress, checkpoints, and the pbt exploit interval"""
    pbt_fraction: float = 0.25
    """pbt: fraction of the members replaced by copies of the best at each exploit"""
    pbt_perturb: float = 1.25
    """pbt: a copied range setting is multiplied by this or by its inverse"""
    pbt_resample: float = 0.25
    """pbt: probability that a copied list setting draws a new value"""
    heartbeat: int = 10
    """seconds between a worker's heartbeats; a trial 3 beats late is failed and queued again"""

    def validate(self) -> "SweepSettings":
        for name in ("trials", "population", "seeds", "eval_episodes", "chunk", "heartbeat"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be a positive integer, got {value!r}")
        check_seed(self.seed, "seed", 0, 2**32 - 1 - self.trials)  # Optuna's samplers take seed + trial count
        check_seed(self.eval_seed, "eval_seed")
        if self.eval_requests < 2:
            raise ValueError(f"--eval-requests: must be >= 2, got {self.eval_requests}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler: unknown sampler {self.sampler!r}; known: {', '.join(SAMPLERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule: unknown schedule {self.schedule!r}; known: {', '.join(SCHEDULES)}")
        if self.population % self.seeds:
            raise ValueError(f"--population {self.population} must be a multiple of --seeds {self.seeds}")
        if not self.eval_loads or not all(math.isfinite(l) and l > 0 for l in self.eval_loads):
            raise ValueError(f"--eval-loads: every load must be positive, got {self.eval_loads}")
        if not 0 <= self.eval_warmup < 1:
            raise ValueError(f"--eval-warmup: must be in [0, 1), got {self.eval_warmup}")
        if self.schedule == "pbt":
            if self.seeds != 1:
                raise ValueError("--seeds: pbt trains each member as its own trial; use --seeds 1")
            if not 0 < self.pbt_fraction <= 0.5:
                raise ValueError(f"--pbt-fraction: must be in (0, 0.5], got {self.pbt_fraction}")
            if self.population < 2 * max(1, int(self.pbt_fraction * self.population)):
                raise ValueError(f"--population {self.population}: too small for pbt (need at least 2 members)")
            if not (math.isfinite(self.pbt_perturb) and self.pbt_perturb > 1):
                raise ValueError(f"--pbt-perturb: must be > 1, got {self.pbt_perturb}")
            if not 0 <= self.pbt_resample <= 1:
                raise ValueError(f"--pbt-resample: must be in [0, 1], got {self.pbt_resample}")
        return self

    def protocol(self) -> Protocol:
        """The evaluation protocol of the objective and of the baselines (the ``--eval-*`` options)."""
        return Protocol(tuple(float(x) for x in self.eval_loads), self.eval_episodes, self.eval_requests,
                        self.eval_warmup, self.eval_seed)

    @property
    def trials_per_batch(self) -> int:
        return self.population // self.seeds


def storage_url(out: Path, storage: str | None) -> str:
    """The study's storage URL: ``storage`` as given, or an SQLite file in the sweep folder."""
    if storage:
        return storage
    return f"sqlite:///{(out / 'study.db').resolve()}"


def _retry_race(make: Callable[[], Any], tries: int = 8) -> Any:
    """``make()``, tried again (up to ``tries`` times, 0.25 s to 2 s apart) when it loses a race with
    another worker creating the same tables, study or attribute (the database says it exists)."""
    import sqlalchemy.exc

    for attempt in range(tries):
        try:
            return make()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as err:
            text = str(err).lower()
            racing = any(w in text for w in ("already exists", "duplicate", "unique constraint", "locked"))
            if not racing or attempt == tries - 1:
                raise
            time.sleep(min(0.25 * 2 ** attempt, 2.0))


def open_storage(url: str, heartbeat: int, option: str = "--storage") -> Any:
    """An Optuna RDB storage with heartbeats; ValueError (naming ``option`` and the URL, never its
    password) when it cannot be opened."""
    import optuna
    import sqlalchemy.exc

    def requeue(study: Any, trial: Any) -> None:
        if trial.user_attrs.get("surplus"):
            return
        attrs = {k: v for k, v in trial.user_attrs.items() if k in ("resume", "member")}
        study.enqueue_trial(trial.params, user_attrs={**attrs, "retry_of": trial.number})

    shown = url.split("@")[-1] if "@" in url else url  # never print a password
    if "://" not in url:
        raise ValueError(f"{option} {shown!r}: expected a database URL (sqlite:///FILE, postgresql://...)")
    try:
        # workers that start together on a new database race to create its tables: the loser finds
        # them made once the winner commits
        return _retry_race(lambda: optuna.storages.RDBStorage(
            url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat, heartbeat_stale_trial_callback=requeue,
            engine_kwargs={"pool_pre_ping": True}))
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError, ModuleNotFoundError,
            ValueError, OSError) as err:
        raise ValueError(f"{option} {shown!r}: cannot open the study database ({storage_reason(err)})") from None


def storage_reason(err: BaseException) -> str:
    """A database error in a few words: what a user can act on (unwritable, damaged, unreachable)."""
    text = " ".join(str(getattr(err, "orig", None) or err).split())
    low = text.lower()
    if "readonly" in low or "read-only" in low or "permission denied" in low or "unable to open" in low:
        return f"cannot write it or its folder: {text[:160]}"
    if "malformed" in low or "not a database" in low or "file is encrypted" in low or "disk image" in low:
        return f"the file is damaged or not an SQLite database: {text[:160]}"
    return f"{type(err).__name__}: {text[:200]}"


def make_sampler(name: str, dims: Sequence[Dimension], seed: int) -> Any:
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=8)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    lists = [d for d in dims if d.choices is None]
    if lists:
        raise ValueError(f"--sampler grid: dimension {lists[0].name} is a range; give it as a list NAME=v1,v2,...")
    return _Grid({d.name: list(d.choices) for d in dims}, seed=seed)


def _grid_class() -> type:
    import optuna

    class Grid(optuna.samplers.GridSampler):
        """Optuna's grid sampler without its ``study.stop()`` once the grid is used up (that call is for
        ``study.optimize``; a sweep counts its trials itself and never asks for more than the grid)."""

        def after_trial(self, study, trial, state, values) -> None:
            pass

    return Grid


def _Grid(*args: Any, **kwargs: Any) -> Any:
    return _grid_class()(*args, **kwargs)


class Sweep:
    """One worker of a sweep: :meth:`run` trains batches of trials until the study holds ``trials``
    complete ones (this worker's and the others')."""

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
        self.url = storage_url(self.out, storage)
        self.default_storage = not storage
        self.on_progress = on_progress
        self.env, self.env_params = env, env_params
        self._runner: PopulationRunner | None = None
        self._act: Callable | None = None
        self.storage: Any = None
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

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
        """Open (or create) the study. Workers started at the same moment on a new database all get
        it: on an SQLite file the schema and the study are made under a file lock beside it; on any
        database a worker that loses the race to create them retries (bounded: 8 tries, 0.25 s to 2 s
        apart). ValueError names the option (``--storage``, or ``--out`` for the default file) when the
        database cannot be opened, written or read."""
        import filelock
        import optuna

        option = "--out" if self.default_storage else "--storage"
        lock: Any = contextlib.nullcontext()
        if self.url.startswith("sqlite:///") and not self.url.startswith("sqlite:///:memory:"):
            db = Path(self.url[len("sqlite:///"):])
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ValueError(f"{option} {str(self.out if self.default_storage else db)!r}: cannot make the "
                                 f"folder {str(db.parent)!r} ({err.strerror or type(err).__name__})") from None
            lock = filelock.FileLock(str(db) + ".lock", timeout=120)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            with lock:
                study = _retry_race(lambda: self._create_study(option))
        except filelock.Timeout:
            raise ValueError(f"{option}: another worker holds {lock.lock_file} for more than 120 s") from None
        except OSError as err:  # the lock file in a folder the user may not write
            shown = str(self.out) if self.default_storage else self.url.split("@")[-1]
            raise ValueError(f"{option} {shown!r}: cannot write beside the study database "
                             f"({err.strerror or type(err).__name__})") from None
        fixed = self.fixed()
        saved = study.user_attrs.get("jaxsplit")
        if saved is None:
            _retry_race(lambda: study.set_user_attr("jaxsplit", fixed))
        else:
            for part in ("env", "ppo", "sweep"):
                for name in sorted(set(saved.get(part, {})) | set(fixed[part])):
                    if saved.get(part, {}).get(name) != fixed[part].get(name):
                        raise ValueError(f"study {self.study_name!r}: {part} setting {name}="
                                         f"{fixed[part].get(name)!r} differs from the study's "
                                         f"{saved.get(part, {}).get(name)!r}; use another --study or the same settings")
            if saved.get("space") != fixed["space"]:
                theirs = ", ".join(Dimension(**{**d, "choices": None if d["choices"] is None else tuple(d["choices"])}).text()
                                   for d in saved.get("space", []))
                raise ValueError(f"study {self.study_name!r}: the space ({', '.join(d.text() for d in self.dims)}) "
                                 f"differs from the study's ({theirs}); use another --study or the same space")
        return study

    def _create_study(self, option: str) -> Any:
        import optuna

        storage = self.storage = open_storage(self.url, self.settings.heartbeat, option)
        try:
            return optuna.create_study(study_name=self.study_name, storage=storage, direction="minimize",
                                       load_if_exists=True)
        except optuna.exceptions.DuplicatedStudyError:  # made by another worker meanwhile
            return optuna.load_study(study_name=self.study_name, storage=storage)

    def _distributions(self) -> dict[str, Any]:
        return {d.name: d.distribution() for d in self.dims}

    def _ask_batch(self, study: Any) -> list[Any]:
        """Up to trials_per_batch new trials, never beyond the study's budget of ``trials``."""
        import optuna
        from optuna.trial import TrialState

        active = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        batch = []
        for _ in range(self.settings.trials_per_batch):
            count = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING,
                                                                  TrialState.WAITING)))
            study.sampler = make_sampler(self.settings.sampler, self.dims, self.settings.seed + count)
            trial = study.ask(self._distributions())
            self._beat(study, [trial])
            rank = sum(1 for t in study.get_trials(deepcopy=False, states=active) if t.number < trial.number)
            if rank >= self.settings.trials:  # another worker took the last places first
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                break
            trial.set_user_attr("worker", self.worker)
            batch.append(trial)
        return batch

    def _beat(self, study: Any, trials: Sequence[Any]) -> None:
        for t in trials:
            self.storage.record_heartbeat(t._trial_id)

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
        rows = [dict(t.params, seed=self.settings.seed + s) for t in batch for s in range(self.settings.seeds)]
        return rows + [dict(rows[0]) for _ in range(self.settings.population - len(rows))]

    def train_batch(self, study: Any, batch: Sequence[Any]) -> None:
        """Train, evaluate and tell one batch; on an interruption the batch's trials are queued again."""
        rows = self.member_rows(batch)
        pop_dir = self.out / "populations" / f"trials-{batch[0].number}-{batch[-1].number}"
        resumed = self._resumable(batch)
        stop = threading.Event()
        beats = threading.Thread(target=self._beat_loop, args=(study, batch, stop), daemon=True)
        beats.start()
        folder = pop_dir if resumed is None else resumed
        requeue = lambda: self._requeue(study, batch, folder, stop)
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

    def _requeue(self, study: Any, batch: Sequence[Any], folder: Path, stop: threading.Event) -> None:
        """Mark the batch's running trials failed (interrupted) and queue each again, to resume from the
        population's newest checkpoint in ``folder``."""
        import optuna

        stop.set()
        for t in batch:
            try:
                if self.storage.get_trial(t._trial_id).state != optuna.trial.TrialState.RUNNING:
                    continue
                t.set_user_attr("interrupted", True)
                study.tell(t, state=optuna.trial.TrialState.FAIL)
            except Exception:  # told meanwhile (the batch was ending), or the database is gone
                continue
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, "resume": str(folder),
                                                      "member": batch.index(t)})

    def _beat_loop(self, study: Any, batch: Sequence[Any], stop: threading.Event) -> None:
        while not stop.wait(self.settings.heartbeat):
            try:
                self._beat(study, batch)
            except Exception:  # a lost connection: the trials go stale and are rerun elsewhere
                pass

    def _resumable(self, batch: Sequence[Any]) -> Path | None:
        """The population folder to resume: every trial of the batch was queued again from the same
        interrupted population, as its members 0..n-1 in order, and its checkpoint is there."""
        marks = [(t.user_attrs.get("resume"), t.user_attrs.get("member")) for t in batch]
        folders = {m[0] for m in marks}
        if len(folders) != 1 or None in folders or [m[1] for m in marks] != list(range(len(batch))):
            return None
        folder = Path(folders.pop())
        if checkpoint.latest_step(folder) is None or not (folder / "population.json").exists():
            return None
        saved = json.loads((folder / "population.json").read_text())
        return folder if saved.get("rows") == self.member_rows(batch) else None

    def _train(self, rows: list[dict[str, Any]], pop_dir: Path, resume: bool, real: int
               ) -> tuple[Any, Any, dict[str, np.ndarray], list[list[int]]]:
        runner = self.runner()
        trainer = runner.trainer
        total = self.config.num_updates
        keys, hparams = population_members(trainer.default_hparams(), rows)
        keys, hparams = runner.place((keys, hparams))
        runners = runner.init(keys, hparams)
        done, metrics, lineage = 0, {}, []
        if resume:
            state, done = checkpoint.restore(pop_dir, {"runners": runners, "hparams": hparams})
            runners, hparams = runner.place(state["runners"]), runner.place(state["hparams"])
            saved = json.loads((pop_dir / "population.json").read_text())
            lineage = saved["lineage"]
            with np.load(pop_dir / "metrics.npz") as data:
                metrics = {k: data[k][:, :done] for k in data.files}
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
                    key = jax.random.fold_in(jax.random.PRNGKey(self.settings.seed), done)
                    runners, hparams, source = exploit(key, chunk["reward"].mean(1), runners, hparams,
                                                       dims=self.dims, fraction=self.settings.pbt_fraction,
                                                       perturb=self.settings.pbt_perturb,
                                                       resample=self.settings.pbt_resample)
                    lineage.append([int(s) for s in gather(source)])
                if manager is not None:
                    checkpoint.save(manager, done, {"runners": runners, "hparams": hparams})
                    with atomic.replacing(pop_dir / "metrics.npz") as tmp:
                        np.savez(tmp, **metrics)
                    atomic.write_text(pop_dir / "population.json",
                                  atomic.dumps({"rows": rows, "lineage": lineage, "update": done}) + "\n")
                if self.on_progress is not None:
                    rate = (done - start) * self.config.batch_size * len(rows) / max(time.perf_counter() - t0, 1e-9)
                    self.on_progress({"event": "chunk", "update": done, "updates": total, "steps_per_s": rate, "trials": real})
        finally:
            if manager is not None:
                manager.close()
        return runners, hparams, metrics, lineage

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
        import optuna

        k = self.settings.seeds
        finals = member_values(jax.device_get(hparams), self.dims)
        steps = self.config.num_updates * self.config.batch_size
        for i, trial in enumerate(batch):
            members = slice(i * k, (i + 1) * k)
            lat = results["mean_latency_s"][members]  # (K, loads, episodes)
            per_load = []
            for j, load in enumerate(self.settings.eval_loads):
                means = lat[:, j].mean(-1)
                spread = means if k > 1 else lat[0, j]
                ci = float(1.96 * np.std(spread, ddof=1) / np.sqrt(len(spread))) if len(spread) > 1 else float("nan")
                per_load.append({"load": float(load), "mean_latency_s": float(means.mean()), "mean_latency_s_ci": ci,
                                 "p99_latency_s": float(results["p99_latency_s"][members, j].mean())})
            objective = float(np.mean([r["mean_latency_s"] for r in per_load]))
            trial.set_user_attr("per_load", per_load)
            trial.set_user_attr("seeds", [rows[m]["seed"] for m in range(i * k, (i + 1) * k)])
            trial.set_user_attr("env_steps", steps * k)
            trial.set_user_attr("population_wall_s", round(wall, 3))
            trial.set_user_attr("population", len(rows))
            if self.settings.schedule == "pbt":
                trial.set_user_attr("final_params", finals[i * k])
                trial.set_user_attr("lineage", [gen[i] for gen in lineage])
            if math.isfinite(objective):
                study.tell(trial, objective)
            else:  # a diverged member: failed, never a result
                trial.set_user_attr("diverged", True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
        best = study.best_trial if any(t.state == optuna.trial.TrialState.COMPLETE for t in
                                       study.get_trials(deepcopy=False)) else None
        if best is not None and best.number in [t.number for t in batch]:
            i = [t.number for t in batch].index(best.number)
            self.write_run(best, rows[i * k], runners, hparams, metrics, i * k)

    def write_run(self, trial: Any, row: dict[str, Any], runners: Any, hparams: Any,
                  metrics: dict[str, np.ndarray], member: int) -> Path:
        """A run folder (like ``jaxsplit train``'s) of one member, and ``best`` pointing at it."""
        values = member_values(jax.device_get(hparams), self.dims)[member]
        ppo_values = {n: v for n, v in values.items() if n in TRACED}
        env_values = {n: v for n, v in values.items() if n not in TRACED}
        config = dataclasses.replace(self.config, **ppo_values)
        spec = dataclasses.replace(self.spec, **env_values)
        run_dir = self.out / "runs" / f"trial-{trial.number}"
        tmp = self.out / "runs" / f".trial-{trial.number}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text(atomic.dumps(run_config_json(config, spec, row["seed"]), indent=2) + "\n")
        lines = []
        for u in range(self.config.num_updates):
            lines.append(atomic.dumps({"update": u + 1, "env_steps": (u + 1) * self.config.batch_size,
                                     **{name: float(v[member, u]) for name, v in metrics.items()}}))
        (tmp / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
        (tmp / "trial.json").write_text(atomic.dumps({"number": trial.number, "objective": trial.value,
                                                    "params": trial.params, "final_params": values,
                                                    "seed": row["seed"]}, indent=2) + "\n")
        one = jax.tree.map(lambda x: np.asarray(x)[member], jax.device_get(runners))
        manager = checkpoint.open_manager(tmp)
        try:
            checkpoint.save(manager, self.config.num_updates, one)
        finally:
            manager.close()
        if run_dir.exists():
            shutil.rmtree(run_dir)
        os.replace(tmp, run_dir)
        link = self.out / f".best-{os.getpid()}"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path("runs") / run_dir.name)
        os.replace(link, self.out / "best")
        return run_dir

    # ----- the worker loop -----------------------------------------------------------------------

    def _next_batch(self, study: Any) -> list[Any] | None:
        """The next batch of this worker (waiting while the rest of the budget runs elsewhere), or None
        when the study holds ``trials`` complete trials."""
        from optuna.storages import fail_stale_trials
        from optuna.trial import TrialState

        while True:
            fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            if sum(t.state == TrialState.COMPLETE for t in trials) >= self.settings.trials:
                return None
            active = sum(t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING) for t in trials)
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            if active >= self.settings.trials and not waiting:
                time.sleep(min(self.settings.heartbeat, 5))  # the rest runs elsewhere: wait for it or for it to go stale
                continue
            batch = self._ask_batch(study)
            if batch:
                return batch

    def _quiet(self) -> None:
        import optuna

        # heartbeats are recorded by this worker itself (ask and tell), which Optuna's warnings do not foresee
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    def run(self) -> Any:
        """Train batches until the study holds ``trials`` complete trials; returns the study."""
        from optuna.trial import TrialState

        self._quiet()
        study = self.open_study()
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if done >= self.settings.trials:
            raise NothingToDo(f"study {self.study_name!r} already holds {done} complete trials (--trials "
                              f"{self.settings.trials}): nothing to do; raise --trials to continue it")
        self.out.mkdir(parents=True, exist_ok=True)
        baselines = self.baselines()
        while True:
            batch = self._next_batch(study)
            if batch is None:
                break
            self.train_batch(study, batch)
            self.write_files(study, baselines)
            self._report(study)
        self.write_files(study, baselines)
        return study

    def _report(self, study: Any) -> None:
        from optuna.trial import TrialState

        if self.on_progress is None:
            return
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best = min((t.value for t in done), default=None)
        self.on_progress({"event": "batch", "complete": len(done), "trials": self.settings.trials, "best": best})

    def baselines(self) -> list[dict[str, Any]]:
        """Every baseline on the sweep's evaluation episodes (cached in baselines.json)."""
        path = self.out / "baselines.json"
        key = {"loads": list(self.settings.eval_loads), "episodes": self.settings.eval_episodes, "requests": self.settings.eval_requests,
               "warmup": self.settings.eval_warmup, "seed": self.settings.eval_seed, "env": self.spec.to_json(),
               "policies": list(self.baseline_names)}
        if path.exists():
            try:
                saved = json.loads(path.read_text())
                if saved.get("key") == key:
                    return saved["rows"]
            except (OSError, json.JSONDecodeError, AttributeError):
                pass
        env, params = self.spec.base()
        rows = []
        for name in self.baseline_names:
            rows += evaluate(name, env, params, protocol=self.settings.protocol())
        atomic.write_text(path, atomic.dumps({"key": key, "rows": rows}, indent=1) + "\n")
        return rows

    def write_files(self, study: Any, baselines: list[dict[str, Any]]) -> None:
        from . import sweep_report

        records = trial_records(study)
        atomic.write_text(self.out / "trials.jsonl", "".join(atomic.dumps(r) + "\n" for r in records))
        sweep_report.write(self.out, study, records, baselines, self.dims, self.settings, self.study_name)


#: compiled population programs and evaluation functions, per (spec, config, devices) (see Sweep.runner)
_RUNNERS: dict[tuple, PopulationRunner] = {}
_ACTS: dict[int, Callable] = {}


class NothingToDo(Exception):
    """The study already holds the requested number of complete trials."""


@dataclass
class _Policy:
    params: Any
    obs_stats: Any


def trial_records(study: Any) -> list[dict[str, Any]]:
    """One record per trial of the study (surplus places excluded), in trial order."""
    records = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        attrs = t.user_attrs
        rec = {"number": t.number, "state": t.state.name.lower(), "params": t.params, "seeds": attrs.get("seeds"),
               "objective": t.value, "per_load": attrs.get("per_load"), "env_steps": attrs.get("env_steps"),
               "wall_s": attrs.get("population_wall_s"), "population": attrs.get("population"),
               "worker": attrs.get("worker")}
        for name in ("final_params", "lineage", "retry_of", "interrupted", "diverged"):
            if name in attrs:
                rec[name] = attrs[name]
        records.append(rec)
    return records
