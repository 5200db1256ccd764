"""Atomic file writes: a file is either its old content or its whole new content, never half written.

Each write goes to a temporary file in the same folder (so the rename stays on one file system), is
flushed to disk, and replaces the target with ``os.replace`` (atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator


#: Held while a group of renames must complete together; the Ctrl-C thread of the command line
#: (:func:`jaxsplit.cli._exit_on_ctrl_c`) takes it before the process exits.
CRITICAL = threading.RLock()


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C (on the command line) waits until the body is done: for a few renames that only make
    sense together (a run swapped in for another)."""
    with CRITICAL:
        yield


#: Called (in order, from the Ctrl-C thread) when the command line is interrupted, before it exits.
ON_INTERRUPT: list[Callable[[], None]] = []


@contextlib.contextmanager
def on_interrupt(hook: Callable[[], None]) -> Iterator[None]:
    """While the body runs, Ctrl-C on the command line calls ``hook()`` before the process exits (a
    sweep queues its running trials again). The hook runs on another thread than the body's."""
    ON_INTERRUPT.append(hook)
    try:
        yield
    finally:
        ON_INTERRUPT.remove(hook)


@contextlib.contextmanager
def replacing(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    ``suffix`` is the temporary file's suffix (a plotting library picks the format from it)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def savefig(fig: Any, path: str | Path, **kwargs: Any) -> None:
    """``fig.savefig(path)`` atomically; the format is ``path``'s suffix."""
    path = Path(path)
    with replacing(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or None, **kwargs)


def append_lines(path: str | Path, lines: list[str]) -> None:
    """Append whole lines in one write and flush them to disk (a torn last line can only follow a
    crash inside this call; readers skip it)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in lines))
        fh.flush()
        os.fsync(fh.fileno())


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-Infinity, numpy's too) replaced by None, so that it
    is strict JSON (RFC 8259 has no NaN or Infinity); tuples become lists."""
    if isinstance(obj, float) or (hasattr(obj, "dtype") and getattr(obj, "shape", None) == () and
                                  getattr(obj.dtype, "kind", "") == "f"):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`strict_json` ``(obj)``: strict JSON, non-finite numbers as null."""
    return json.dumps(strict_json(obj), allow_nan=False, **kwargs)
