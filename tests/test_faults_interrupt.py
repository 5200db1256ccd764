"""Ctrl-C: SIGINT sent to a real ``jaxsplit`` process at several moments (start-up, the first
compile, training between checkpoints, evaluation) gives one line and exit status 130, never a
traceback or a crash, and leaves the run folder resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxsplit.agents import checkpoint
from jaxsplit.agents.run import read_config, read_metrics

pytestmark = pytest.mark.slow  # every test of the module trains or runs real processes
ROOT = Path(__file__).resolve().parents[1]
#: 32 one-update chunks of a tiny network, a checkpoint after each: long enough to be interrupted.
UPDATES = 32
TINY = ["--total-timesteps", str(UPDATES * 256), "--num-envs", "16", "--num-steps", "16", "--num-minibatches", "2",
        "--update-epochs", "1", "--hidden", "16", "--requests", "32", "--log-every", "1", "--checkpoint-every", "1",
        "--no-progress", "--skip-eval"]


def _start(args: list[str], cache: Path) -> subprocess.Popen:
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "jaxsplit.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _interrupt(proc: subprocess.Popen, *, after_s: float | None = None, after_line: str | None = None) -> tuple[int, str, str]:
    """SIGINT after ``after_s`` seconds, or once a stdout line starts with ``after_line``."""
    out_lines = []
    if after_line is not None:
        for line in proc.stdout:
            out_lines.append(line)
            if line.startswith(after_line):
                break
    else:
        time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(out_lines) + out, err


def _assert_clean(code: int, err: str, command: str) -> None:
    assert code == 130, (code, err[-2000:])
    assert "Traceback" not in err and "Segmentation" not in err and "Fatal" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == f"jaxsplit {command}: interrupted", err[-2000:]


def _assert_resumable(run: Path) -> None:
    """What --resume reads is whole: the configuration, every metrics line, the newest checkpoint."""
    read_config(run)
    rows = read_metrics(run)
    json.loads((run / "config.json").read_text())
    step = checkpoint.latest_step(run)
    if step is not None:
        assert [r["update"] for r in rows][:step] == list(range(1, step + 1))


@pytest.mark.parametrize("after_s", [1.0, 5.0])
def test_ctrl_c_at_start_up_or_compile(tmp_path, after_s):
    run = tmp_path / "run"
    code, _, err = _interrupt(_start(["train", *TINY, "--out", str(run)], tmp_path / "cache"), after_s=after_s)
    _assert_clean(code, err, "train")
    if run.exists():
        _assert_resumable(run)


def test_ctrl_c_while_training_leaves_a_resumable_run(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    code, out, err = _interrupt(_start(["train", *TINY, "--out", str(run)], cache), after_line="update 2 ")
    _assert_clean(code, err, "train")
    _assert_resumable(run)
    assert checkpoint.latest_step(run) >= 1
    # and --resume finishes it
    done = subprocess.run([sys.executable, "-m", "jaxsplit.cli", "train", *TINY, "--out", str(run), "--resume"],
                          cwd=ROOT, env={**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["update"] for r in read_metrics(run)] == list(range(1, UPDATES + 1))


def test_ctrl_c_during_evaluation(tmp_path):
    args = ["evaluate", "--policy", "whole_cluster,myopic", "--loads", "0.3,0.9", "--episodes", "64",
            "--requests", "256"]
    code, _, err = _interrupt(_start(args, tmp_path / "cache"), after_s=5.0)
    _assert_clean(code, err, "evaluate")
