"""JAX's persistent compilation cache for the command line.

Every ``jaxsplit`` command that compiles (split, evaluate, train, bench, ...) loads a program compiled
by an earlier run instead of compiling it again. The cache is on for the command line only; importing
jaxsplit as a library leaves JAX's settings alone.

Where it lives, first match wins:

* ``--no-cache`` or ``JAXSPLIT_CACHE_DIR=off`` (also ``0``, ``none``, ``false``): no persistent cache;
* ``--cache-dir DIR`` or ``JAXSPLIT_CACHE_DIR=DIR``;
* ``$XDG_CACHE_HOME/jaxsplit/jax``, else ``~/.cache/jaxsplit/jax``.

A folder that cannot be created or written is reported with one warning on standard error and the
command runs without a persistent cache; it never fails the command.

Several processes may share one folder (population workers, bridge workers, parallel runs): the
cache is given a size limit (:data:`MAX_BYTES`, least recently used entries evicted), which makes
JAX guard every read and write with a file lock, so that no process reads an entry another one is
still writing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterator, Mapping

ENV_VAR = "JAXSPLIT_CACHE_DIR"
OFF_VALUES = frozenset({"off", "0", "none", "false", "no"})
#: least-recently-used eviction beyond this size; a limit also turns on JAX's cache file lock
MAX_BYTES = 4 << 30
#: programs that compile faster than this are not worth a disk entry (JAX's default is 1 s)
MIN_COMPILE_SECONDS = 0.2


def default_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/jaxsplit/jax`` or ``~/.cache/jaxsplit/jax``."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jaxsplit" / "jax"


def resolve(cache_dir: str | None = None, disabled: bool = False,
            environ: Mapping[str, str] | None = None) -> Path | None:
    """The cache folder the options and the environment ask for, or None when it is turned off.

    Args:
      cache_dir: ``--cache-dir``; overrides ``JAXSPLIT_CACHE_DIR``.
      disabled: ``--no-cache``.
    """
    environ = os.environ if environ is None else environ
    if disabled:
        return None
    value = cache_dir if cache_dir is not None else environ.get(ENV_VAR, "").strip()
    if value.lower() in OFF_VALUES:
        return None
    return Path(value).expanduser() if value else default_dir(environ)


def writable(path: Path) -> str | None:
    """None if ``path`` can be created and written, else why not (one short phrase)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as err:
        return err.strerror or str(err)
    return None


def drop_empty_entries(path: Path) -> int:
    """Remove zero-byte entries of the cache folder (left by a process killed while writing one); they
    would be read, fail to decompress and be compiled again on every run. Returns how many went."""
    gone = 0
    try:
        entries = list(path.iterdir())
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.name.endswith("-cache") and entry.is_file() and entry.stat().st_size == 0:
                entry.unlink()
                gone += 1
        except OSError:
            pass
    return gone


@contextlib.contextmanager
def enabled(path: Path | None, command: str = "jaxsplit") -> Iterator[Path | None]:
    """Turn JAX's persistent compilation cache on in ``path`` while the block runs; yields the folder
    in use (None when off or unusable). JAX's previous settings and their environment variables
    (``JAX_COMPILATION_CACHE_DIR`` etc., so that subprocesses share the folder and its lock) are
    restored on exit, so a command run in-process (tests) leaves the library's state as it found it."""
    if path is not None:
        why = writable(path)
        if why is not None:
            print(f"{command}: warning: compilation cache directory '{path}' is not writable ({why}); "
                  "compiling without a persistent cache", file=sys.stderr)
            path = None
    if path is None:
        yield None
        return
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    settings = {"jax_compilation_cache_dir": str(path),
                "jax_compilation_cache_max_size": MAX_BYTES,
                "jax_persistent_cache_min_compile_time_secs": MIN_COMPILE_SECONDS}
    saved = {name: getattr(jax.config, name) for name in settings}
    # subprocesses (population and bridge workers) read the same settings from their environment
    saved_env = {name.upper(): os.environ.get(name.upper()) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)
    cc.reset_cache()  # JAX opens the cache once per process; open it again on the new folder
    drop_empty_entries(path)
    try:
        with warnings.catch_warnings():
            # an entry that cannot be read (damaged, half written by a killed process) is compiled
            # again: that is the cache's job, not the user's concern
            warnings.filterwarnings("ignore", message=".*persistent compilation cache entry", category=UserWarning)
            yield path
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        cc.reset_cache()


def split_options(argv: list[str]) -> tuple[list[str], str | None, bool]:
    """Take ``--cache-dir DIR`` / ``--cache-dir=DIR`` and ``--no-cache`` out of ``argv`` (anywhere);
    (the remaining arguments, cache_dir, disabled). ValueError if ``--cache-dir`` has no value."""
    rest, cache_dir, disabled = [], None, False
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        if arg == "--":  # everything after belongs to the command
            rest += argv[i:]
            break
        if arg == "--no-cache":
            disabled = True
        elif arg == "--cache-dir":
            if i + 1 >= len(argv) or not argv[i + 1] or argv[i + 1].startswith("--"):
                raise ValueError("field 'cache-dir': expected a folder after --cache-dir")
            cache_dir = argv[i + 1]
            next(it, None)
        elif arg.startswith("--cache-dir="):
            cache_dir = arg.split("=", 1)[1]
            if not cache_dir:
                raise ValueError("field 'cache-dir': empty folder name")
        else:
            rest.append(arg)
    return rest, cache_dir, disabled
