"""``jaxsplit run`` faults on real processes (loopback only): every wait is bounded by --timeout and
names its phase, and ranks with different configurations say what differs before any tensor moves."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
RUN = [sys.executable, "-m", "jaxsplit.cli", "run", "--model", "alexnet", "--timeout", "4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_rendezvous_with_another_program_on_the_port_times_out():
    with socket.socket() as other:  # a program that accepts connections but is no coordinator
        other.bind(("127.0.0.1", 0))
        other.listen(8)
        port = other.getsockname()[1]
        done = subprocess.run([*RUN, "--input-size", "64", "64", "--rank", "1", "--master-port", str(port)],
                              cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 1, done.stderr
    assert "rank 1: rendezvous at 127.0.0.1:" in done.stderr and "within 4 s" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_rendezvous_with_nobody_listening_is_one_line():
    # c10d logs every failed connection attempt with C++ frames; the command says it once, in one line
    done = subprocess.run([*RUN, "--input-size", "64", "64", "--rank", "1", "--master-port", str(_free_port())],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jaxsplit run: error: rank 1: rendezvous at 127.0.0.1:"), done.stderr


@pytest.mark.slow
def test_ranks_with_different_configurations_say_what_differs():
    port = str(_free_port())
    rank0 = subprocess.Popen([*RUN, "--input-size", "64", "64", "--rank", "0", "--master-port", port], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rank1 = subprocess.run([*RUN, "--input-size", "96", "96", "--rank", "1", "--master-port", port], cwd=ROOT,
                           capture_output=True, text=True, timeout=240)
    _, err0 = rank0.communicate(timeout=240)
    assert rank1.returncode == 1 and rank0.returncode == 1, (rank1.stderr, err0)
    assert "input_size = [96, 96] here, [64, 64] on rank 0" in rank1.stderr, rank1.stderr
    assert "rank(s) 1 run a different configuration" in err0, err0
    for err in (rank1.stderr, err0):
        assert "Traceback" not in err and "gloo" not in err.lower(), err
