"""Where a sweep keeps its state: the study's database (an SQLite file under a file lock, or any database
URL such as ``postgresql://``, opened by any number of workers at once), the population checkpoints
that an interrupted batch resumes from once its trials are queued again, and the run folder of the best
trial."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxsplit import atomic
from jaxsplit.envs import EnvSpec

from . import checkpoint
from .pbt import member_values
from .ppo import TRACED, PPOConfig
from .run import run_config_json
from .space import Dimension


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


class SweepStore:
    """One worker's access to the sweep's study and to its folder ``out``: ``storage`` (``None`` for an
    SQLite file in ``out``), the study ``study_name``, and the population folders under ``out``."""

    def __init__(self, out: Path, study_name: str, storage: str | None, heartbeat: int):
        self.out, self.study_name, self.heartbeat = out, study_name, heartbeat
        self.url = storage_url(out, storage)
        self.default_storage = not storage
        self.storage: Any = None

    @property
    def option(self) -> str:
        """The option that names the database in messages: ``--out`` for the default file."""
        return "--out" if self.default_storage else "--storage"

    # ----- the study -----------------------------------------------------------------------------

    def open_study(self) -> Any:
        """Open (or create) the study. Workers started at the same moment on a new database all get
        it: on an SQLite file the schema and the study are made under a file lock beside it; on any
        database a worker that loses the race to create them retries (bounded: 8 tries, 0.25 s to 2 s
        apart). ValueError names the option (``--storage``, or ``--out`` for the default file) when the
        database cannot be opened, written or read."""
        import filelock
        import optuna

        option = self.option
        lock = self._lock(option)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            with lock:
                return _retry_race(lambda: self._create_study(option))
        except filelock.Timeout:
            raise ValueError(f"{option}: another worker holds {lock.lock_file} for more than 120 s") from None
        except OSError as err:  # the lock file in a folder the user may not write
            shown = str(self.out) if self.default_storage else self.url.split("@")[-1]
            raise ValueError(f"{option} {shown!r}: cannot write beside the study database "
                             f"({err.strerror or type(err).__name__})") from None

    def _lock(self, option: str) -> Any:
        """A file lock beside an SQLite file (its folder made first), or no lock for other databases."""
        import filelock

        if not self.url.startswith("sqlite:///") or self.url.startswith("sqlite:///:memory:"):
            return contextlib.nullcontext()
        db = Path(self.url[len("sqlite:///"):])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"{option} {str(self.out if self.default_storage else db)!r}: cannot make the "
                             f"folder {str(db.parent)!r} ({err.strerror or type(err).__name__})") from None
        return filelock.FileLock(str(db) + ".lock", timeout=120)

    def _create_study(self, option: str) -> Any:
        import optuna

        storage = self.storage = open_storage(self.url, self.heartbeat, option)
        try:
            return optuna.create_study(study_name=self.study_name, storage=storage, direction="minimize",
                                       load_if_exists=True)
        except optuna.exceptions.DuplicatedStudyError:  # made by another worker meanwhile
            return optuna.load_study(study_name=self.study_name, storage=storage)

    def check_fixed(self, study: Any, fixed: dict[str, Any], dims: Sequence[Dimension]) -> None:
        """Record ``fixed`` (what every worker must share) in a new study, or refuse a study whose
        recorded settings or space differ from it."""
        saved = study.user_attrs.get("jaxsplit")
        if saved is None:
            _retry_race(lambda: study.set_user_attr("jaxsplit", fixed))
            return
        for part in ("env", "ppo", "sweep"):
            for name in sorted(set(saved.get(part, {})) | set(fixed[part])):
                if saved.get(part, {}).get(name) != fixed[part].get(name):
                    raise ValueError(f"study {self.study_name!r}: {part} setting {name}="
                                     f"{fixed[part].get(name)!r} differs from the study's "
                                     f"{saved.get(part, {}).get(name)!r}; use another --study or the same settings")
        if saved.get("space") != fixed["space"]:
            theirs = ", ".join(Dimension(**{**d, "choices": None if d["choices"] is None else tuple(d["choices"])}).text()
                               for d in saved.get("space", []))
            raise ValueError(f"study {self.study_name!r}: the space ({', '.join(d.text() for d in dims)}) "
                             f"differs from the study's ({theirs}); use another --study or the same space")

    # ----- interrupted batches -------------------------------------------------------------------

    def population_dir(self, batch: Sequence[Any]) -> Path:
        """The folder of a new batch's population checkpoints."""
        return self.out / "populations" / f"trials-{batch[0].number}-{batch[-1].number}"

    def requeue(self, study: Any, batch: Sequence[Any], folder: Path, stop: threading.Event) -> None:
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

    @staticmethod
    def resumable(batch: Sequence[Any], rows: list[dict[str, Any]]) -> Path | None:
        """The population folder to resume: every trial of the batch was queued again from the same
        interrupted population, as its members 0..n-1 in order, and its checkpoint (of the members
        ``rows``) is there."""
        marks = [(t.user_attrs.get("resume"), t.user_attrs.get("member")) for t in batch]
        folders = {m[0] for m in marks}
        if len(folders) != 1 or None in folders or [m[1] for m in marks] != list(range(len(batch))):
            return None
        folder = Path(folders.pop())
        step = checkpoint.latest_step(folder)
        if step is None or not (folder / "population.json").exists():
            return None
        saved = json.loads((folder / "population.json").read_text())
        # population.json behind its checkpoint: a save interrupted after the checkpoint, in the order
        # before save_population's; its metrics may be short, so the batch starts again
        return folder if saved.get("rows") == rows and saved.get("update", -1) >= step else None


def save_population(manager: Any, pop_dir: Path, done: int, runners: Any, hparams: Any,
                    metrics: dict[str, np.ndarray], rows: list[dict[str, Any]], lineage: list[list[int]],
                    lineage_updates: list[int]) -> None:
    """A population's checkpoint after ``done`` updates, with its metrics and lineage so far
    (``lineage_updates``: the update after which each lineage entry was made).

    The metrics and population.json are written before the checkpoint: an interruption between
    the writes leaves them ahead of the newest checkpoint, never behind it, and
    :func:`restore_population` cuts them back to the checkpoint's update."""
    with atomic.replacing(pop_dir / "metrics.npz") as tmp:
        np.savez(tmp, **metrics)
    atomic.write_text(pop_dir / "population.json",
                      atomic.dumps({"rows": rows, "lineage": lineage, "lineage_updates": lineage_updates,
                                    "update": done}) + "\n")
    checkpoint.save(manager, done, {"runners": runners, "hparams": hparams})


def restore_population(pop_dir: Path, runners: Any, hparams: Any
                       ) -> tuple[dict[str, Any], int, dict[str, np.ndarray], list[list[int]], list[int]]:
    """A population's newest checkpoint (shaped like ``runners`` and ``hparams``): its state, its
    update count, its metrics (P, updates) each and its lineage (with the update of each entry) up to
    that update, whatever a later interrupted save left in the folder."""
    state, done = checkpoint.restore(pop_dir, {"runners": runners, "hparams": hparams})
    saved = json.loads((pop_dir / "population.json").read_text())
    with np.load(pop_dir / "metrics.npz") as data:
        metrics = {k: data[k][:, :done] for k in data.files}
    short = [k for k, v in metrics.items() if v.shape[1] != done]
    if short:
        raise ValueError(f"field 'metrics': {pop_dir / 'metrics.npz'} holds {metrics[short[0]].shape[1]} updates of "
                         f"{short[0]!r}, its checkpoint {done}")
    lineage, updates = saved["lineage"], saved.get("lineage_updates")
    if updates is None:  # written by a save that put the checkpoint first: lineage as it was
        updates = [done] * len(lineage)
    keep = [i for i, u in enumerate(updates) if u <= done]
    return state, done, metrics, [lineage[i] for i in keep], [updates[i] for i in keep]


# ----- the best trial's run folder -----------------------------------------------------------------


def write_run(out: Path, trial: Any, row: dict[str, Any], runners: Any, hparams: Any,
              metrics: dict[str, np.ndarray], member: int, config: PPOConfig, spec: EnvSpec,
              dims: Sequence[Dimension]) -> Path:
    """A run folder (like ``jaxsplit train``'s) of one member under ``out/runs``, and ``out/best``
    pointing at it."""
    values = member_values(jax.device_get(hparams), dims)[member]
    ppo_values = {n: v for n, v in values.items() if n in TRACED}
    env_values = {n: v for n, v in values.items() if n not in TRACED}
    member_config = dataclasses.replace(config, **ppo_values)
    member_spec = dataclasses.replace(spec, **env_values)
    run_dir = out / "runs" / f"trial-{trial.number}"
    tmp = out / "runs" / f".trial-{trial.number}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _fill_run(tmp, trial, row, values, metrics, member, config, member_config, member_spec)
    one = jax.tree.map(lambda x: np.asarray(x)[member], jax.device_get(runners))
    manager = checkpoint.open_manager(tmp)
    try:
        checkpoint.save(manager, config.num_updates, one)
    finally:
        manager.close()
    if run_dir.exists():
        shutil.rmtree(run_dir)
    os.replace(tmp, run_dir)
    link = out / f".best-{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path("runs") / run_dir.name)
    os.replace(link, out / "best")
    return run_dir


def _fill_run(tmp: Path, trial: Any, row: dict[str, Any], values: dict[str, Any], metrics: dict[str, np.ndarray],
              member: int, base: PPOConfig, config: PPOConfig, spec: EnvSpec) -> None:
    """A run folder's config.json, metrics.jsonl and trial.json (``base``: the sweep's PPO settings,
    ``config`` and ``spec``: the member's)."""
    (tmp / "config.json").write_text(atomic.dumps(run_config_json(config, spec, row["seed"]), indent=2) + "\n")
    lines = []
    for u in range(base.num_updates):
        lines.append(atomic.dumps({"update": u + 1, "env_steps": (u + 1) * base.batch_size,
                                 **{name: float(v[member, u]) for name, v in metrics.items()}}))
    (tmp / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    (tmp / "trial.json").write_text(atomic.dumps({"number": trial.number, "objective": trial.value,
                                                "params": trial.params, "final_params": values,
                                                "seed": row["seed"]}, indent=2) + "\n")
