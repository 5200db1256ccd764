"""Mutation score of one module against its fast tests (mutmut 2), in a copy of the git HEAD.

Not part of CI (minutes to hours on 2 cores). Needs ``pip install mutmut==2.5.1 whatthepatch`` in the
virtual environment. The copy is the committed tree (``git archive HEAD``), so the working tree is never
mutated; its tests/conftest.py keeps only the hypothesis profiles (the derandomised CI profile), so
that a mutant's run does not import JAX for a fixture these tests do not use, and every run uses that
profile (``HYPOTHESIS_PROFILE=ci``), so every mutant meets the same examples. ``--lines`` limits the
mutants to line ranges of the module (through a patch file that "adds" those lines).

    python benchmarks/mutation.py jaxsplit/layers.py --lines 27-69,193-244 \\
        --tests tests/test_layers.py tests/test_zoo.py --timeout 2400

``--only 12,34,40-45`` retests the listed mutants of an earlier run with the same ``--lines`` (say, its
survivors against the tests written since): mutmut numbers the selected mutants in the same order.

Prints mutmut's results (the ids of surviving mutants; ``mutmut show ID`` in the copy shows one).
Leave ``mutmut results`` and ``mutmut show`` alone while a run is going: they resynchronise the cache
with the module on disk, which then holds a mutant, drop that line's mutants and stop the run. To
watch one, read its cache read-only:

    sqlite3 "file:COPY/.mutmut-cache?mode=ro" "select status, count(*) from Mutant group by status"
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Numbers the mutants of the selected lines in mutmut's cache as a full run would (``mutmut run ID``
# then tests one): mutmut registers them only inside a run, after timing the unmutated tests.
REGISTER = """
import sys
from types import SimpleNamespace
from mutmut import Context, list_mutations, mutations_by_type
from mutmut.__main__ import read_patch_data
from mutmut.cache import register_mutants, update_line_numbers
module, patch = sys.argv[1:]
config = SimpleNamespace(covered_lines_by_filename=read_patch_data(patch) if patch else None,
                         coverage_data=None, mutation_types_to_apply=set(mutations_by_type))
update_line_numbers(module)
with open(module) as f:
    context = Context(source=f.read(), filename=module, config=config, dict_synonyms=[])
register_mutants({module: list_mutations(context)})
"""


def _ids(text: str) -> list[int]:
    """``"38,42,48-52"`` -> [38, 42, 48, 49, 50, 51, 52]."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def _parser() -> argparse.ArgumentParser:
    """The command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("module", help="the module to mutate, relative to the repository root")
    ap.add_argument("--tests", nargs="+", required=True, help="the test files that cover it")
    ap.add_argument("--select", default="", help="pytest -k expression to run part of the test files")
    ap.add_argument("--lines", default="", help="line ranges to mutate, e.g. 27-69,193-244 (default: all)")
    ap.add_argument("--timeout", type=int, default=2400, help="seconds before the run is stopped")
    ap.add_argument("--only", default="", help="mutant ids to (re)test, e.g. 38,42,48-52: the ids of a run "
                    "with the same --lines (mutmut numbers the selected mutants in order)")
    ap.add_argument("--copy", default=None, help="folder for the copy (default: a new temporary one); an earlier "
                    "run's copy resumes it: mutmut's cache keeps the mutants already killed")
    return ap


def _make_copy(copy: Path) -> None:
    """Extract the committed tree into ``copy`` and prepare it for mutmut."""
    copy.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(copy)], input=archive, check=True)
    # envs/ and agents/ are installed as jaxsplit.envs and jaxsplit.agents (pyproject's package-dir):
    # linked into the copy's package, so its tests import the copy's (mutated) files, not the
    # editable install's
    for part in ("envs", "agents"):
        link = copy / "jaxsplit" / part
        if not link.is_symlink():  # a reused copy (``--copy``) has it already
            link.symlink_to(Path("..") / part)
    conftest = copy / "tests" / "conftest.py"
    text = conftest.read_text()
    conftest.write_text(text[:text.index("@pytest.fixture")].replace("import jax\n", "").replace("import pytest\n", ""))


def _mutmut_command(args: argparse.Namespace, copy: Path) -> list[str]:
    """``mutmut run`` on the module against the tests; with ``--lines``, writes the copy's
    selection.patch and limits the mutants to it."""
    # mutmut 2 counts only exit status 1 as killed; a mutant that breaks the import (pytest's status 2,
    # a collection error) is caught by the tests as well, so every failing status is reported as 1
    pytest = "python -c \"import sys, pytest; sys.exit(1 if pytest.main(sys.argv[1:]) else 0)\""
    cmd = ["mutmut", "run", "--paths-to-mutate", args.module, "--tests-dir", "tests", "--no-progress",
           # one process per mutant (-n 0): a run's few tests gain nothing from xdist's two workers,
           # whose start-up each mutant would pay
           "--runner", pytest + " -x -q -n 0 -p no:cacheprovider " + " ".join(args.tests)
           + (f" -k '{args.select}'" if args.select else "")]
    if args.lines:
        lines = (copy / args.module).read_text().splitlines()
        patch = [f"--- a/{args.module}", f"+++ b/{args.module}"]
        for part in args.lines.split(","):
            lo, hi = (int(v) for v in part.split("-"))
            patch += [f"@@ -0,0 +{lo},{hi - lo + 1} @@"] + ["+" + line for line in lines[lo - 1:hi]]
        (copy / "selection.patch").write_text("\n".join(patch) + "\n")
        cmd += ["--use-patch-file", "selection.patch"]
    return cmd


def _run(runs: list[list[str]], copy: Path, env: dict[str, str], timeout: int) -> None:
    """Run the mutmut commands one after the other in ``copy``, all within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    for run in runs:
        # its own process group: at the timeout mutmut's worker and the test run go with it (killing
        # mutmut alone left them running)
        proc = subprocess.Popen(run, cwd=copy, env=env, start_new_session=True)
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            print(f"stopped after {timeout} s; the results so far:", flush=True)
            break


def main() -> int:
    args = _parser().parse_args()
    copy = Path(args.copy or tempfile.mkdtemp(prefix="mutation."))
    _make_copy(copy)
    cmd = _mutmut_command(args, copy)
    print(f"copy: {copy}", flush=True)
    # the derandomised CI profile whatever the caller's shell says: every mutant meets the same examples
    env = {**os.environ, "HYPOTHESIS_PROFILE": "ci"}
    runs = [cmd]
    if args.only:
        subprocess.run([sys.executable, "-c", REGISTER, args.module, "selection.patch" if args.lines else ""],
                       cwd=copy, env=env, check=True)
        runs = [cmd[:2] + [str(i)] + cmd[2:] for i in _ids(args.only)]
    _run(runs, copy, env, args.timeout)
    subprocess.run(["mutmut", "results"], cwd=copy, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
