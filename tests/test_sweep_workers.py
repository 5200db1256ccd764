"""Several `jaxsplit sweep` workers on one study: SQLite and a real PostgreSQL server, a worker killed
midway, and Ctrl-C then resume. Each worker is a real subprocess of the command line."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test of the module trains or runs real processes
TINY = ["--env", "alloc-n2-v0", "--models", "alexnet,resnet18", "--requests", "16", "--total-timesteps", "512",
        "--num-envs", "16", "--num-steps", "8", "--num-minibatches", "2", "--hidden", "16", "--update-epochs", "1",
        "--space", "lr=3e-4:3e-2:log", "--sampler", "random", "--population", "2", "--chunk", "2",
        "--eval-loads", "0.6", "1.2", "--eval-episodes", "2", "--eval-requests", "24", "--baselines", "random",
        "--heartbeat", "1", "--no-progress"]


def _command(out: Path, trials: int, storage: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "jaxsplit.cli", "sweep", "--out", str(out), "--trials", str(trials), *TINY]
    return cmd + (["--storage", storage] if storage else [])


def _env(cache: str) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache)
    env.pop("XLA_FLAGS", None)
    return env


def _trials(storage: str) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        return optuna.load_study(study_name="sweep", storage=storage).get_trials(deepcopy=False)
    except KeyError:  # no worker has created the study yet
        return []


def _wait_for(predicate, timeout: float, procs=()) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"worker exited early ({p.returncode}): {p.stderr.read()[-2000:]}")
        time.sleep(0.5)
    raise AssertionError("timed out waiting")


def _check_done(storage: str, trials: int) -> list:
    all_trials = _trials(storage)
    complete = [t for t in all_trials if t.state.name == "COMPLETE"]
    assert len(complete) == trials  # none lost, none counted twice
    assert len({t.number for t in complete}) == trials
    assert not [t for t in all_trials if t.state.name in ("RUNNING", "WAITING")]
    return all_trials


def _two_workers(out_a: Path, out_b: Path, storage: str, cache: str, trials: int, kill_one: bool):
    procs = [subprocess.Popen(_command(out, trials, storage), env=_env(cache), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for out in (out_a, out_b)]
    try:
        if kill_one:
            # kill worker A while it trains a trial
            pid = procs[0].pid
            _wait_for(lambda: any(t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(f":{pid}")
                                  for t in _trials(storage)), 300, procs)
            procs[0].kill()
            procs[0].wait()
        outs = [p.communicate(timeout=600) for p in procs[1 if kill_one else 0:]]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (stdout, stderr) in zip(procs[1 if kill_one else 0:], outs):
        assert p.returncode == 0, stderr[-3000:]
        assert "Traceback" not in stderr
    return procs


def test_two_workers_share_a_sqlite_study_and_survive_a_killed_one(tmp_path, compilation_cache):
    out = tmp_path / "sweep"
    storage = f"sqlite:///{out / 'study.db'}"
    out.mkdir()
    _two_workers(out, out, storage, compilation_cache, trials=4, kill_one=True)
    all_trials = _check_done(storage, 4)
    killed = [t for t in all_trials if t.state.name == "FAIL"]
    assert killed, "the killed worker's trial is marked failed"
    retried = [t for t in all_trials if t.state.name == "COMPLETE" and "retry_of" in t.user_attrs]
    assert {t.user_attrs["retry_of"] for t in retried} == {t.number for t in killed}  # and was trained again
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert sorted(r["number"] for r in records if r["state"] == "complete") == sorted(
        t.number for t in all_trials if t.state.name == "COMPLETE")
    assert (out / "best" / "config.json").exists()


def test_interrupted_sweep_resumes_without_duplicates(tmp_path, compilation_cache):
    out = tmp_path / "sweep"
    storage = f"sqlite:///{out / 'study.db'}"
    # Python's Ctrl-C handler in the worker whatever pytest was started from: a shell without job
    # control starts a background job (and so this worker) with SIGINT ignored, and Python keeps that
    cmd = _command(out, 4)
    cmd[1:3] = ["-c", "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                      "from jaxsplit.cli import main; sys.exit(main())"]
    proc = subprocess.Popen(cmd, env=_env(compilation_cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait_for(lambda: bool(glob.glob(str(out / "populations" / "*" / "checkpoints" / "*"))), 300, [proc])
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    states = {t.state.name for t in _trials(storage)}
    assert "WAITING" in states and "RUNNING" not in states  # the batch was queued again
    again = subprocess.run(_command(out, 4), env=_env(compilation_cache), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    all_trials = _check_done(storage, 4)
    interrupted = {t.number for t in all_trials if t.user_attrs.get("interrupted")}
    assert interrupted and interrupted == {t.user_attrs["retry_of"] for t in all_trials
                                           if t.state.name == "COMPLETE" and "retry_of" in t.user_attrs}


# ----- PostgreSQL -----------------------------------------------------------------------------------

def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server in a temporary folder on 127.0.0.1, stopped after the module."""
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (.ci/run installs the Debian package)")
        pytest.skip("PostgreSQL is not installed")
    data = Path(tempfile.mkdtemp(prefix="jaxsplit-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = lambda *args: subprocess.run(prefix + list(args), check=True, capture_output=True, text=True, timeout=120)
    run(str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres")
    run(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w", "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "jaxsplit")
        yield f"postgresql://postgres@127.0.0.1:{port}/jaxsplit"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop")
        shutil.rmtree(data, ignore_errors=True)


def test_two_workers_on_postgresql(tmp_path, postgres, compilation_cache):
    # each worker has its own sweep folder (as on two machines); the study is the server's
    _two_workers(tmp_path / "a", tmp_path / "b", postgres, compilation_cache, trials=6, kill_one=False)
    all_trials = _check_done(postgres, 6)
    workers = {t.user_attrs["worker"] for t in all_trials if t.state.name == "COMPLETE"}
    assert len(workers) == 2, workers  # both took part
    for out in (tmp_path / "a", tmp_path / "b"):
        records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
        assert len([r for r in records if r["state"] == "complete"]) == 6
