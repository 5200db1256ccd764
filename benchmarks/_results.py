"""Record benchmark figures in benchmarks/RESULTS.md, one section per benchmark script.

Each script owns the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->``; rerunning a
script replaces its own section and leaves the others as they are. The file is written atomically.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nFigures recorded by the scripts in benchmarks/; each section names its command and machine.\n"


def machine() -> str:
    """A one-line description of this machine and the JAX backend."""
    try:
        import jax

        backend = f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}"
    except Exception:  # pragma: no cover - jax missing
        backend = "no jax"
    cpu = platform.processor() or platform.machine()
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {backend}, Python {platform.python_version()}"


def command() -> str:
    """The command line that ran this script, as a user would type it."""
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def record(name: str, body: str) -> None:
    """Replace (or add) section ``name`` of RESULTS.md with ``body`` (markdown)."""
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=RESULTS.parent, prefix=".RESULTS.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, RESULTS)


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=RESULTS.parent, check=True).stdout.strip()
    except Exception:  # pragma: no cover
        return "unknown"


def load_average() -> str:
    """The machine's 1-minute load average (other jobs sharing its cores), e.g. "3.2"."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:  # pragma: no cover - not on every platform
        return "unknown"


def previous_closed_form():
    """The closed form as it was before the device-major rewrite (frozen in tests/), for same-run
    before/after figures."""
    sys.path.insert(0, str(RESULTS.parent.parent / "tests"))
    import previous_closed_form

    return previous_closed_form

