"""First run against second run with the command line's persistent compilation cache; into RESULTS.md.

Each command runs twice in a fresh process, sharing one new, empty cache folder
(``JAXSPLIT_CACHE_DIR``): the first compiles and fills the cache, the second loads from it. Measured:

* ``jaxsplit train`` (a short run, ``--skip-eval``): the command's wall time;
* ``jaxsplit bench split`` (the exact solver, one row) and ``jaxsplit bench train`` (one agent): the
  row's compile time (``--json``, compiled ahead of time, so the figure is the compilation alone);
* ``jaxsplit bench all --quick``: the command's wall time.

    python benchmarks/cache_timing.py            # records its section of RESULTS.md
    python benchmarks/cache_timing.py --quick    # smaller train run, prints only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import command, git_revision, load_average, record  # noqa: E402

from jaxsplit import bench  # noqa: E402


def run(argv: list[str], cache: Path) -> tuple[float, str]:
    """(wall seconds, standard output) of ``jaxsplit ARGV`` in a fresh process using ``cache``."""
    env = dict(os.environ, JAXSPLIT_CACHE_DIR=str(cache))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "jaxsplit.cli", *argv], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"jaxsplit {' '.join(argv)} failed:\n{out.stderr[-2000:]}")
    return wall, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a shorter train run; print, do not record")
    args = parser.parse_args()
    steps = 2 * 32768 if args.quick else 8 * 32768
    load0 = load_average()
    rows = []
    with tempfile.TemporaryDirectory(prefix="jaxsplit-cache-") as tmp:
        cache = Path(tmp) / "jax"
        train = ["train", "--total-timesteps", str(steps), "--skip-eval", "--no-progress", "--log-every", "4"]
        walls = [run([*train, "--out", str(Path(tmp) / f"run{i}")], cache)[0] for i in (1, 2)]
        rows.append((f"`jaxsplit {' '.join(train)} --out RUN`", "wall time of the command (s)", *walls))
        print(f"train: {walls[0]:.1f} s, then {walls[1]:.1f} s", flush=True)
        size = sum(p.stat().st_size for p in cache.iterdir())
        for argv in (["bench", "split", "--solvers", "exact", "--devices", "8", "--batches", "16384", "--repeats", "1"],
                     ["bench", "train", "--agents", "1", "--updates", "1", "--repeats", "1"]):
            section = argv[1]
            compiles = [json.loads(run([*argv, "--json"], cache)[1])[section][0]["compile_s"] for _ in (1, 2)]
            rows.append((f"`jaxsplit {' '.join(argv)}`", "the row's compile time (s)", *compiles))
            print(f"{' '.join(argv)}: compile {compiles[0]:.2f} s, then {compiles[1]:.2f} s", flush=True)
        quick = ["bench", "all", "--quick", "--json"]
        walls = [run(quick, cache)[0] for _ in (1, 2)]
        rows.append((f"`jaxsplit {' '.join(quick)}`", "wall time of the command (s)", *walls))
        print(f"bench all --quick: {walls[0]:.1f} s, then {walls[1]:.1f} s", flush=True)
        files = sum(1 for p in cache.iterdir() if p.name.endswith("-cache"))
    body = ["## Persistent compilation cache (`benchmarks/cache_timing.py`)", "",
            f"Command: `{command()}`  ", f"Machine: {bench.machine_line()}  ",
            f"Load average (1 min): {load0} before, {load_average()} after (shared machine)  ",
            f"Revision: {git_revision()}", "",
            "Each command twice, each time in a fresh process, with one new cache folder "
            "(`JAXSPLIT_CACHE_DIR`): the first run compiles and fills it, the second loads from it. After the "
            f"train run the folder held {size / 1e6:.1f} MB; at the end {files} programs.", "",
            "| command | figure | first run | second run | second / first |", "|---|---|---:|---:|---:|"]
    body += [f"| {cmd} | {what} | {a:.2f} | {b:.2f} | {b / a:.2f} |" for cmd, what, a, b in rows]
    body += ["", "A cached program still has to be traced and lowered (the cache key is the lowered module), so the "
             "second run keeps that part of the compile time; XLA's compilation is what it saves."]
    text = "\n".join(body)
    print(text)
    if not args.quick:
        record("cache_timing", text)


if __name__ == "__main__":
    main()
