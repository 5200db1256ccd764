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
