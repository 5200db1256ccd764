"""Ctrl-C (and a batch scheduler's SIGTERM) in every command, at several moments: one line, exit
status 130, no traceback, and what the command had written left whole (a sweep's running trials
queued again, never left running)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_sweep_workers import TINY as SWEEP_TINY, _trials

ROOT = Path(__file__).resolve().parents[1]


def _start(args: list[str], cache: Path) -> subprocess.Popen:
    # Python's own Ctrl-C handler whatever the test was started from (a background job ignores SIGINT)
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from jaxsplit.cli import main; sys.exit(main())")
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen, after_s: float, sig: int = signal.SIGINT) -> tuple[int, str]:
    time.sleep(after_s)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _assert_clean(code: int, err: str, command: str) -> None:
    assert code == 130, (code, err[-2000:])
    assert "Traceback" not in err and "Exception ignored" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == f"jaxsplit {command}: interrupted", err[-2000:]


@pytest.mark.parametrize("after_s, sig", [(1.0, signal.SIGINT), (6.0, signal.SIGINT), (6.0, signal.SIGTERM),
                                          (20.0, signal.SIGINT)])
@pytest.mark.slow
def test_a_sweep_stopped_at_any_moment_exits_130_and_leaves_no_trial_running(tmp_path, after_s, sig):
    out = tmp_path / "sweep"
    proc = _start(["sweep", "--out", str(out), "--trials", "2", *SWEEP_TINY], tmp_path / "cache")
    code, err = _stop(proc, after_s, sig)
    if code == 0:  # finished first: nothing to check
        return
    _assert_clean(code, err, "sweep")
    if (out / "study.db").exists():
        assert not [t for t in _trials(f"sqlite:///{out / 'study.db'}") if t.state.name == "RUNNING"]
    for name in ("trials.jsonl", "baselines.json"):
        if (out / name).exists():
            text = (out / name).read_text()
            [json.loads(line) for line in text.splitlines()] if name.endswith("l") else json.loads(text)


@pytest.fixture(scope="module")
def big_batch(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("batch") / "many.jsonl"
    line = json.dumps({"model": "vgg16", "devices": [{"flops": 2e10}, {"flops": 5e10, "bandwidth": 1.25e8}]})
    path.write_text((line + "\n") * 20000)
    return path


@pytest.mark.parametrize("argv, after_s", [
    (["bench", "split", "--quick"], 4.0),
    (["evaluate", "--policy", "whole_cluster,myopic", "--loads", "0.3,0.9", "--episodes", "64"], 1.0),
    (["zoo", "vgg16"], 0.3)])
def test_every_command_stopped_exits_130_in_one_line(tmp_path, argv, after_s):
    code, err = _stop(_start(argv, tmp_path / "cache"), after_s)
    if code == 0:  # finished first
        return
    _assert_clean(code, err, argv[0])


@pytest.mark.parametrize("json_out", [False, True])
def test_split_of_a_large_batch_stopped_exits_130(tmp_path, big_batch, json_out):
    code, err = _stop(_start(["split", str(big_batch), *(["--json"] if json_out else [])], tmp_path / "cache"), 3.0)
    _assert_clean(code, err, "split")


# ----------------------------------------------------------------------------- large batches in chunks

def test_split_in_chunks_prints_what_one_batch_prints(tmp_path, monkeypatch, capsys):
    from jaxsplit import cli
    from jaxsplit.commands import split

    lines = [json.dumps({"model": m, "input_size": [64, 64], "devices": [{"flops": 1e10 * (k + 1)},
                         {"flops": 3e10, "bandwidth": 1e8 * (k + 1)}]})
             for k, m in enumerate(["alexnet", "resnet18", "alexnet", "mobilenet_v2", "vgg16"] * 2)]
    path = tmp_path / "b.jsonl"
    path.write_text("\n".join(lines) + "\n")
    outputs = {}
    for chunk in (3, 4096):
        monkeypatch.setattr(split, "CHUNK", chunk)
        for mode in ([], ["--json"]):
            assert cli.main(["split", str(path), *mode]) == 0
            outputs[chunk, bool(mode)] = capsys.readouterr().out
    assert outputs[3, True] == outputs[4096, True] and len(outputs[3, True].splitlines()) == 10
    assert outputs[3, False] == outputs[4096, False] and "instance 10:" in outputs[3, False]
    path.write_text("\n".join(lines[:7] + ['{"model": "alexnet", "devices": [{"flops": -1}]}'] + lines[7:]) + "\n")
    monkeypatch.setattr(split, "CHUNK", 3)
    assert cli.main(["split", str(path), "--json"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "line 8" in err and "flops" in err, err


@pytest.mark.parametrize("tty", [False, True])
def test_split_progress_only_on_a_terminal(monkeypatch, tty):
    from jaxsplit.commands import split

    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    progress = split._Progress()
    progress(10, 100, 5)
    assert (progress.bar is not None) == tty
    progress.close()
