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
    if not REVISION.search(body):  # every section names the revision and the machine it was measured on
        body = body.rstrip() + f"\n\nRevision: {git_revision()}"
    if not MACHINE.search(body):
        body = body.rstrip() + f"\n\nMachine: {machine()}"
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



# --------------------------------------------------------------------------- prose against tables
#: A measured figure in prose: a percentage or a ratio ("4.3%", "3.75x"), a decimal ("1.364"), a
#: number with thousands separators ("532,853") or a duration ("285 s", "6.4 us"). Integers alone are
#: settings (seeds, episodes, cores) and are not checked; version numbers ("0.10.2") are skipped.
FIGURE = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:%|x\b|(?=\s?(?:s|ms|us)\b))"
                    r"|(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+)(?![\d.])")
REVISION = re.compile(r"(?i:revision:?|\brev\.?)\s+[0-9a-f]{7,40}\b")
MACHINE = re.compile(r"\b\d+ cores\b")


def _sections(text: str) -> list[dict]:
    """The level-2 sections of RESULTS.md, line by line: for each, its heading, its generated blocks
    (name -> text between ``<!-- BEGIN name -->`` and its END, wherever the heading falls), its table
    rows outside them and its prose (the other lines, code spans and link targets removed)."""
    sections: list[dict] = []
    block = None
    for line in text.splitlines():
        begin, finish = re.match(r"<!-- BEGIN (.*?) -->", line), re.match(r"<!-- END (.*?) -->", line)
        if begin or finish:  # a block may open before its section's heading
            block = begin.group(1) if begin else None
            continue
        if line.startswith("## "):
            sections.append({"heading": line.strip(), "blocks": {}, "tables": [], "prose": []})
        if not sections:
            continue
        current = sections[-1]
        if block is not None:
            current["blocks"].setdefault(block, []).append(line)
        elif line.lstrip().startswith("|"):
            current["tables"].append(line)
        elif not line.startswith("#"):
            current["prose"].append(re.sub(r"\]\([^)]*\)", "]", re.sub(r"`[^`]*`", "", line)))
    return sections


def _norm(figure: str) -> str:
    return figure.lstrip("+-").replace(" ", "")


def prose_problems(text: str) -> list[str]:
    """What breaks RESULTS.md's convention, one line each (empty: none).

    Every figure (:data:`FIGURE`) in a section's hand-written prose must appear, as written (sign
    aside), in that section's generated blocks or tables; every generated block, and every section
    with a hand-written table, must name its revision and its machine."""
    problems = []
    for sec in _sections(text):
        heading = sec["heading"]
        generated = "\n".join(["\n".join(b) for b in sec["blocks"].values()] + sec["tables"])
        known = {_norm(m.group(0)) for m in FIGURE.finditer(generated)}
        for line in sec["prose"]:
            for m in FIGURE.finditer(line):
                if _norm(m.group(0)) not in known:
                    problems.append(f"{heading}: figure {m.group(0)!r} of the prose is in none of its tables "
                                    f"({line.strip()[:70]!r})")
        units = {f"block {name}": "\n".join(b) for name, b in sec["blocks"].items()}
        if sec["tables"]:
            units["its hand-written text"] = "\n".join(sec["prose"] + sec["tables"])
        for name, unit in units.items():
            if not REVISION.search(unit):
                problems.append(f"{heading}: {name} names no revision")
            if not MACHINE.search(unit):
                problems.append(f"{heading}: {name} names no machine")
    return problems


if __name__ == "__main__":
    found = prose_problems(RESULTS.read_text())
    print("\n".join(found) or "RESULTS.md: every prose figure is in its section's tables; every section names its revision and machine")
    sys.exit(1 if found else 0)
