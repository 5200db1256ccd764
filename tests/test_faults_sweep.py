"""Sweeps and files under faults: workers started at the same moment on a new SQLite or PostgreSQL
study all get it, a damaged study database and a folder the user may not write are one line with exit
status 2 naming the option the user gave."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxsplit import cli
from test_sweep_workers import TINY, _check_done, _command, _env, postgres  # noqa: F401 (postgres: a fixture)

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["sweep", *TINY, "--trials", "1"]
TRAIN = ["train", "--total-timesteps", "256", "--num-envs", "16", "--num-steps", "16", "--num-minibatches", "2",
         "--update-epochs", "1", "--hidden", "8", "--requests", "16", "--no-progress", "--skip-eval"]


def _one_line(code: int, err: str, *needles: str, absent: tuple[str, ...] = ()) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    for word in absent:
        assert word not in lines[0], (word, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- workers at the same moment

#: Opens the study of a sweep like a worker does, at the wall-clock time argv[2] (all together).
_OPEN = """
import sys, time
from jaxsplit.agents.sweep import Sweep, SweepSettings
from jaxsplit.agents.ppo import PPOConfig
from jaxsplit.agents.space import parse_dimension
from jaxsplit.envs import EnvSpec
sweep = Sweep(sys.argv[1] + "/out", EnvSpec(env="alloc-n2-v0", models="alexnet"),
              PPOConfig(total_timesteps=512, num_envs=16, num_steps=8, num_minibatches=2), [parse_dimension("lr=1e-4:1e-2:log")],
              SweepSettings(trials=2, population=2, sampler="random"), study="s", storage=sys.argv[3] or None)
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
study = sweep.open_study()
print(study.study_name, len(study.get_trials()))
"""


def _open_together(tmp: Path, storage: str, n: int = 4) -> None:
    at = time.time() + 8.0  # every worker imported and waiting by then
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN, str(tmp), str(at), storage], cwd=ROOT,
                              env=_env(str(tmp / "cache")), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "s 0", err[-3000:]


@pytest.mark.slow
def test_workers_opening_a_new_sqlite_study_together_all_get_it(tmp_path):
    _open_together(tmp_path, "")  # the default storage: OUT/study.db


@pytest.mark.slow
def test_workers_opening_a_new_postgresql_study_together_all_get_it(tmp_path, postgres):  # noqa: F811
    import sqlalchemy

    name = f"s{os.getpid()}_{time.monotonic_ns()}"
    engine = sqlalchemy.create_engine(postgres.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:  # a new, empty database: the workers race to make the schema
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    _open_together(tmp_path, postgres.rsplit("/", 1)[0] + "/" + name)


def _three_workers(out: Path, storage: str, cache: str, trials: int = 3) -> None:
    procs = [subprocess.Popen(_command(out, trials, storage), env=_env(cache), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p, *p.communicate(timeout=900)) for p in procs]
    for p, _, err in results:
        assert p.returncode == 0 and "Traceback" not in err, err[-3000:]
    _check_done(storage, trials)


@pytest.mark.slow
def test_three_sweep_workers_started_together_on_a_new_sqlite_file(tmp_path, compilation_cache):
    out = tmp_path / "sweep"
    _three_workers(out, f"sqlite:///{out / 'study.db'}", compilation_cache)


@pytest.mark.slow
def test_three_sweep_workers_started_together_on_postgresql(tmp_path, postgres, compilation_cache):  # noqa: F811
    import sqlalchemy

    name = f"t{os.getpid()}_{time.monotonic_ns()}"
    engine = sqlalchemy.create_engine(postgres.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    _three_workers(tmp_path / "sweep", postgres.rsplit("/", 1)[0] + "/" + name, compilation_cache)


# ----------------------------------------------------------------------------- a damaged study database

def _study_db(path: Path) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name="sweep", storage=f"sqlite:///{path}")
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)}
    for i in range(60):
        trial = study.ask(dist)
        trial.set_user_attr("note", "x" * 64)
        study.tell(trial, float(i))


def _damage(kind: str, path: Path) -> None:
    data = bytearray(path.read_bytes())
    n = len(data)
    if kind == "header zeroed":
        data[:100] = bytes(100)
    elif kind == "middle overwritten":
        data[n // 3: 2 * n // 3] = b"\xff" * (2 * n // 3 - n // 3)
    elif kind == "truncated":
        data = data[: n // 2 + 7]
    elif kind == "text":
        data = bytearray(b"not a database\n" * 100)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def study_db(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("db") / "study.db"
    _study_db(path)
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["header zeroed", "middle overwritten", "truncated", "text"])
def test_a_damaged_study_database_is_one_line(tmp_path, capsys, study_db, kind):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "study.db").write_bytes(study_db)
    _damage(kind, out / "study.db")
    code = cli.main([*SWEEP, "--out", str(out), "--trials", "300"])
    captured = capsys.readouterr()
    if code == 0:  # sqlite may still read what the damage spared: then the sweep is whole
        return
    _one_line(code, captured.err, "--out", "study.db", absent=("--storage",))


# ----------------------------------------------------------------------------- folders the user may not write

@pytest.fixture
def unwritable(tmp_path):
    """A folder this process may not write in: mode 555, or for root (who writes anyway) immutable."""
    path = tmp_path / "locked"
    path.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr: no folder is unwritable")
        yield path
        subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


@pytest.mark.parametrize("case", ["train --out", "train --out below", "sweep --out", "sweep --out itself",
                                  "sweep --storage"])
def test_a_folder_the_user_may_not_write_is_one_line(tmp_path, capsys, unwritable, case):
    if case == "sweep --out itself":  # the default storage's file cannot be made: --out is named
        argv, needles, absent = [*SWEEP, "--out", str(unwritable)], ("--out", str(unwritable)), ("--storage",)
    else:
        argv, needles, absent = {
            "train --out": ([*TRAIN, "--out", str(unwritable / "run")], ("--out", "run"), ()),
            "train --out below": ([*TRAIN, "--out", str(unwritable / "a" / "b")], ("--out",), ()),
            "sweep --out": ([*SWEEP, "--out", str(unwritable / "sweep")], ("--out",), ("--storage",)),
            "sweep --storage": ([*SWEEP, "--out", str(tmp_path / "s"), "--storage",
                                 f"sqlite:///{unwritable / 'study.db'}"], ("--storage", "study.db"), ()),
        }[case]
    _one_line(cli.main(argv), capsys.readouterr().err, *needles, absent=absent)
    assert list(unwritable.iterdir()) == []


@pytest.mark.parametrize("cut", ["metrics", "population", "checkpoint"])
def test_a_population_save_interrupted_at_any_write_resumes_from_a_whole_checkpoint(tmp_path, monkeypatch, cut):
    """Ctrl-C between the writes of a population's save (its metrics, population.json, its
    checkpoint) leaves a folder that resumes from the newest whole checkpoint, with the metrics and
    lineage of that update, never more columns or entries than updates."""
    import types

    import numpy as np

    from jaxsplit.agents import checkpoint, sweep_storage

    pop = tmp_path / "pop"
    pop.mkdir()
    tree = lambda v: ({"w": np.full((3, 2), v, np.float32)}, {"lr": np.full((3,), v, np.float32)})
    rows = [{"seed": s} for s in range(3)]
    metrics = lambda n: {"reward": np.arange(12, dtype=np.float32).reshape(3, 4)[:, :n]}  # columns appended
    manager = checkpoint.open_manager(pop, max_to_keep=1)
    try:
        sweep_storage.save_population(manager, pop, 2, *tree(1.0), metrics(2), rows, [[0, 1, 2]], [2])
        target = {"metrics": (sweep_storage.np, "savez"), "population": (sweep_storage.atomic, "write_text"),
                  "checkpoint": (sweep_storage.checkpoint, "save")}[cut]

        def stop(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(*target, stop)
        with pytest.raises(KeyboardInterrupt):
            sweep_storage.save_population(manager, pop, 4, *tree(2.0), metrics(4), rows, [[0, 1, 2], [1, 1, 0]], [2, 4])
        monkeypatch.undo()
    finally:
        manager.close()
    batch = [types.SimpleNamespace(user_attrs={"resume": str(pop), "member": i}) for i in range(3)]
    assert sweep_storage.SweepStore.resumable(batch, rows) == pop
    (runners, hparams), done, got, lineage, made = (lambda s, d, m, l, u: ((s["runners"], s["hparams"]), d, m, l, u))(
        *sweep_storage.restore_population(pop, *tree(0.0)))
    assert done == 2 and got["reward"].shape == (3, 2) and lineage == [[0, 1, 2]] and made == [2]
    np.testing.assert_array_equal(got["reward"], metrics(2)["reward"])
    np.testing.assert_array_equal(runners["w"], tree(1.0)[0]["w"])


def test_a_population_whose_record_is_behind_its_checkpoint_starts_again(tmp_path):
    """A folder whose checkpoint is newer than its population.json (a save that wrote the checkpoint
    first and was stopped before the rest) is not resumed: its metrics may be short."""
    import types

    import numpy as np

    from jaxsplit import atomic
    from jaxsplit.agents import checkpoint, sweep_storage

    pop = tmp_path / "pop"
    pop.mkdir()
    rows = [{"seed": 0}]
    manager = checkpoint.open_manager(pop, max_to_keep=1)
    try:
        checkpoint.save(manager, 4, {"runners": {"w": np.zeros(2, np.float32)}, "hparams": {}})
    finally:
        manager.close()
    np.savez(pop / "metrics.npz", reward=np.zeros((1, 2), np.float32))
    atomic.write_text(pop / "population.json", atomic.dumps({"rows": rows, "lineage": [], "update": 2}) + "\n")
    batch = [types.SimpleNamespace(user_attrs={"resume": str(pop), "member": 0})]
    assert sweep_storage.SweepStore.resumable(batch, rows) is None
