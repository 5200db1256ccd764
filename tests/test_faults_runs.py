"""Run folders under faults: ``--overwrite`` with a bad setting loses nothing (the new run is written
beside the old one and swapped in at the end), one process at a time owns a run folder (its lock
names the owner; a dead owner's lock is taken over), and a run stopped before its first checkpoint
resumes. Concurrent commands are real subprocesses started at the same moment."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from jaxsplit import cli
from jaxsplit.agents import checkpoint
from jaxsplit.agents.run import LOCK_FILE, RUN_FILES, read_metrics, run_lock

ROOT = Path(__file__).resolve().parents[1]
UPDATES = 4
TINY = ["--total-timesteps", str(UPDATES * 256), "--num-envs", "16", "--num-steps", "16", "--num-minibatches", "2",
        "--update-epochs", "1", "--hidden", "8", "--requests", "16", "--no-progress", "--skip-eval",
        "--log-every", "1", "--checkpoint-every", "2"]


def _tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` (hidden ones aside) -> its content's hash."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)}


def _old_run(path: Path) -> dict[str, str]:
    """A folder holding every file of a finished run, and one of the user's."""
    path.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if name == "checkpoints":
            (path / name / "3").mkdir(parents=True)
            (path / name / "3" / "state").write_text("old state")
        else:
            (path / name).write_text(f"old {name}")
    (path / "notes.txt").write_text("mine")
    return _tree(path)


def _one_line(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- --overwrite

_FACTORIES = '''
import sys

def boom():
    raise RuntimeError("no such weights")

def leave():
    sys.exit(3)
'''


def _bad_settings(tmp: Path, write: bool = True) -> dict[str, list[str]]:
    if write:
        (tmp / "net.py").write_text(_FACTORIES)
        (tmp / "cluster.json").write_text(json.dumps({"devices": [{"flops": 1e10}, {"flops": -1.0}]}))
    return {
        "loads above the contract": ["--loads", "1e7,1e12"],
        "unknown env": ["--env", "nope"],
        "negative churn": ["--env", "alloc-any-v0", "--churn", "-1"],
        "factory that raises": ["--models", f"{tmp / 'net.py'}:boom"],
        "factory that exits": ["--models", f"{tmp / 'net.py'}:leave"],
        "unknown model": ["--models", "vgg17"],
        "missing cluster file": ["--cluster", str(tmp / "none.json")],
        "cluster with a negative capacity": ["--cluster", str(tmp / "cluster.json")],
        "loads in the wrong order": ["--loads", "0.9,0.3"],
        "negative learning rate": ["--lr", "-1"],
        "no environments": ["--num-envs", "0"],
        "huge seed": ["--seed", "99999999999999999999"],
        "unknown baseline": ["--eval-policies", "greedy"],
    }


@pytest.mark.parametrize("case", list(_bad_settings(Path("/nonexistent"), write=False)))
def test_overwrite_with_a_bad_setting_keeps_the_old_run(tmp_path, capsys, case):
    out = tmp_path / "run"
    before = _old_run(out)
    argv = _bad_settings(tmp_path)[case]
    code = cli.main(["train", *TINY, "--out", str(out), "--overwrite", *argv])
    _one_line(code, capsys.readouterr().err)
    assert _tree(out) == before


@settings(max_examples=12)
@given(option=st.sampled_from(["--loads", "--churn", "--gamma", "--num-envs", "--util-weight"]),
       scale=st.floats(1e-12, 1e12), sign=st.sampled_from([-1.0, 1.0]))
def test_overwrite_with_drawn_bad_values_keeps_the_old_run(tmp_path_factory, option, scale, sign):
    """Values drawn outside each option's range (loads outside [1e-6, 1e6], a negative churn, a
    discount above 1, no environments, a utilisation weight outside [0, 1e6]): refused, the old run whole."""
    out = tmp_path_factory.mktemp("run")
    before = _old_run(out)
    big, tiny = 1e6 * (1 + scale), 1e-6 / (1 + scale) / 2
    value = {"--loads": f"{big!r},{2 * big!r}" if sign > 0 else f"{tiny!r},0.5",
             "--churn": repr(-max(scale, 1e-9)), "--gamma": repr(1.0 + max(scale, 1e-3)),
             "--num-envs": str(-int(scale % 1000)), "--util-weight": repr(sign * (1e6 + max(scale, 1.0)))}[option]
    extra = ["--env", "alloc-any-v0"] if option == "--churn" else []
    with pytest.raises((ValueError, SystemExit)):
        from jaxsplit.commands import train

        train.main([*TINY, "--out", str(out), "--overwrite", *extra, option, value])
    assert _tree(out) == before


@pytest.mark.slow
def test_overwrite_swaps_the_new_run_in_at_the_end(tmp_path, capsys, compilation_cache):
    out = tmp_path / "run"
    _old_run(out)
    assert cli.main(["train", *TINY, "--out", str(out), "--overwrite", "--seed", "5"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([LOCK_FILE, "checkpoints", "config.json", "metrics.jsonl", "notes.txt",
                            "training_curve.png"])  # the old report and evaluation went with the old run
    assert json.loads((out / "config.json").read_text())["seed"] == 5
    assert (out / "notes.txt").read_text() == "mine"
    assert checkpoint.latest_step(out) == UPDATES
    assert [r["update"] for r in read_metrics(out)] == list(range(1, UPDATES + 1))


def test_an_interrupted_overwrite_leaves_the_old_run_and_its_leftovers_go(tmp_path):
    out = tmp_path / "run"
    before = _old_run(out)
    stage = out / ".overwrite-99999"  # what an --overwrite stopped by Ctrl-C leaves
    (stage / "checkpoints").mkdir(parents=True)
    (stage / "config.json").write_text("{}")
    with run_lock(out):
        pass
    assert not stage.exists() and _tree(out) == before


# ----------------------------------------------------------------------------- one owner

_HOLD = ("import sys, time; from jaxsplit.agents.run import run_lock; lock = run_lock(sys.argv[1]); "
         "lock.__enter__(); print('held', flush=True); time.sleep(120)")


@pytest.mark.parametrize("flags", [[], ["--resume"], ["--overwrite"]])
def test_a_run_folder_held_by_a_live_process_is_refused_and_a_dead_ones_taken_over(tmp_path, capsys, flags):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = _one_line(cli.main(["train", *TINY, "--out", str(out), *flags]), capsys.readouterr().err,
                         "is in use by another jaxsplit process", f"pid {holder.pid} on {socket.gethostname()}")
        assert line.startswith("jaxsplit train: error: --out")
    finally:
        holder.kill()
        holder.wait()
    with run_lock(out):  # the dead process's lock is taken over
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()


def _start(args: list[str], cache: str) -> subprocess.Popen:
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "jaxsplit.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _together(argv: list[str], cache: str, n: int = 2) -> list[tuple[int, str]]:
    procs = [_start(argv, cache) for _ in range(n)]
    done = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        done.append((p.returncode, err))
    return done


def _assert_one_run(out: Path, seed: int = 0) -> None:
    assert [r["update"] for r in read_metrics(out)] == list(range(1, UPDATES + 1))
    assert json.loads((out / "config.json").read_text())["seed"] == seed
    assert checkpoint.latest_step(out) == UPDATES


@pytest.mark.slow
def test_two_trains_started_together_on_one_folder(tmp_path, compilation_cache):
    out = tmp_path / "run"
    results = _together(["train", *TINY, "--out", str(out)], compilation_cache)
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    err = next(err for code, err in results if code == 2)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "in use by another jaxsplit process" in err or "already holds" in err, err
    _assert_one_run(out)


@pytest.mark.slow
def test_two_resumes_started_together(tmp_path, compilation_cache):
    out = tmp_path / "run"
    first = _start(["train", *TINY, "--out", str(out)], compilation_cache)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    # as if stopped after update 2: the newest checkpoint and the metrics after it are gone
    import shutil

    shutil.rmtree(out / "checkpoints" / str(UPDATES))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    results = _together(["train", *TINY, "--out", str(out), "--resume"], compilation_cache)
    for code, err in results:
        assert code in (0, 2) and "Traceback" not in err, (code, err)
        if code == 2:
            assert len(err.strip().splitlines()) == 1 and "in use by another jaxsplit process" in err, err
    assert 0 in [code for code, _ in results]
    _assert_one_run(out)


# ----------------------------------------------------------------------------- before the first checkpoint

@pytest.mark.slow
def test_a_run_stopped_before_its_first_checkpoint_resumes_or_is_told_how(tmp_path, capsys, compilation_cache):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    # as if Ctrl-C came during the first compile: config.json and an empty metrics.jsonl, no checkpoint
    import shutil

    shutil.rmtree(out / "checkpoints")
    (out / "training_curve.png").unlink()
    (out / "metrics.jsonl").write_text("")
    _one_line(cli.main(["train", *TINY, "--out", str(out)]), capsys.readouterr().err, "--resume", "--overwrite")
    assert cli.main(["train", *TINY, "--out", str(out), "--resume"]) == 0
    _assert_one_run(out)


def test_resume_of_a_folder_without_a_run_says_how_to_start_it(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    _one_line(cli.main(["train", *TINY, "--out", str(out), "--resume"]), capsys.readouterr().err,
              "no run to continue", "without --resume")
