"""The ``jaxsplit`` command line.

Each subcommand lives in its own module and exposes ``main(argv) -> int``; this dispatcher imports
it lazily (so ``jaxsplit zoo`` never imports torch or the agents). Every bad input is reported as
``jaxsplit <command>: error: ...`` on standard error with exit status 2, without a traceback.

Commands that compile JAX programs run with JAX's persistent compilation cache on
(:mod:`jaxsplit.compile_cache`; ``--cache-dir DIR``, ``--no-cache`` or ``JAXSPLIT_CACHE_DIR`` move it
or turn it off).
"""

from __future__ import annotations

# Only what the interpreter has loaded already, or nearly: a Ctrl-C that comes while this module is
# imported cannot be answered by the command yet, so the rest is imported once main() has set up
# the answer (jaxsplit.compile_cache and what it pulls in, tempfile and pathlib among them).
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Callable, Sequence

#: subcommand -> (module, help line)
COMMANDS: dict[str, tuple[str, str]] = {
    "split": ("jaxsplit.commands.split", "split every layer of instances (JSON / JSON Lines) across devices"),
    "zoo": ("jaxsplit.commands.zoo", "list the model zoo, or print one model's layer table"),
    "evaluate": ("jaxsplit.commands.evaluate", "evaluate allocation policies in the environment"),
    "train": ("jaxsplit.commands.train", "train a PPO allocation policy (the main job)"),
    "sweep": ("jaxsplit.commands.sweep", "search PPO hyperparameters with Optuna, a population of trials at a time"),
    "validate": ("jaxsplit.commands.validate", "prove a split numerically against PyTorch"),
    "run": ("jaxsplit.commands.run", "run split inference across worker processes"),
    "bench": ("jaxsplit.commands.bench", "measure split-solver, environment and training throughput here"),
}

#: commands that compile nothing, so they never touch the compilation cache (nor import jax for it)
UNCACHED = frozenset({"zoo"})


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: jaxsplit COMMAND [options]   (jaxsplit COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "options of every command:",
              "  --cache-dir DIR  JAX's persistent compilation cache here (default: $JAXSPLIT_CACHE_DIR, else",
              "                   $XDG_CACHE_HOME/jaxsplit/jax or ~/.cache/jaxsplit/jax)",
              "  --no-cache       compile without the persistent cache (also JAXSPLIT_CACHE_DIR=off)"]
    return "\n".join(lines)


#: Exit status after Ctrl-C (128 + SIGINT) and after the reader of standard output went away
#: (128 + SIGPIPE), as a shell reports them.
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141


def run_command(name: str, body: Callable[[], int]) -> int:
    """Run ``body`` and turn a ValueError, an OSError or running out of memory (settings too large for
    the machine) into a one-line error with exit status 2, Ctrl-C into one line and status 130, and a
    closed standard output (``| head``) into status 141 without a word."""
    try:
        return body()
    except ValueError as err:
        print(f"jaxsplit {name}: error: {err}", file=sys.stderr)
        return 2
    except RecursionError:
        print(f"jaxsplit {name}: error: input nested too deeply", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the message
        print(f"jaxsplit {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader is gone: send the rest of the output nowhere so that the exit flush stays quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as err:  # a path the user may not write (PermissionError), a full or read-only disk, ...
        print(f"jaxsplit {name}: error: {os_error(err)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"jaxsplit {name}: error: out of memory; {_SMALLER}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # XLA's out of memory; anything else is a fault, with its traceback
        if not out_of_memory(err):
            raise
        print(f"jaxsplit {name}: error: {memory_message(err)}", file=sys.stderr)
        return 2


_SMALLER = "run it with smaller settings (fewer environments, agents or trials at once, smaller batches)"


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is XLA failing to allocate a buffer (a JaxRuntimeError saying so)."""
    text = str(err)
    return type(err).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and (
        "RESOURCE_EXHAUSTED" in text or "Out of memory" in text)


def memory_message(err: BaseException) -> str:
    """XLA's out of memory in one line, with the size it asked for where it says, e.g. ``out of memory:
    a buffer of 57.9 GB could not be allocated; run it with smaller settings (...)``."""
    import re

    asked = re.search(r"allocat\w* (\d+) bytes", str(err))
    what = f"a buffer of {int(asked.group(1)) / 1e9:.1f} GB could not be allocated" if asked else \
        str(err).strip().splitlines()[0][:200]
    return f"out of memory: {what}; {_SMALLER}"


def os_error(err: OSError) -> str:
    """An OSError in one line: what failed on which path, e.g. ``cannot write 'runs/x': Permission denied``."""
    what = err.strerror or type(err).__name__
    path = err.filename
    if path is None:
        return f"{what} ({type(err).__name__})"
    verb = "cannot write" if isinstance(err, PermissionError) or err.errno in (30, 28) else "cannot use"
    return f"{verb} {str(path)!r}: {what}"


def _silence_stderr() -> None:
    """Send whatever the process writes to standard error from now on nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
    except OSError:
        pass


def atomic_critical() -> None:
    """Wait until renames that belong together are done (:func:`jaxsplit.atomic.uninterrupted`)."""
    atomic = sys.modules.get("jaxsplit.atomic")
    if atomic is not None:
        atomic.CRITICAL.acquire()


def _exit_on_ctrl_c(name: str, signals: frozenset = frozenset({signal.SIGINT})) -> None:
    """Ctrl-C ends the process at once, whatever it is doing, with one line and status 130.

    SIGINT is blocked in every thread (threads started later inherit the mask) and received by a
    dedicated thread with ``sigwait``, so it is answered even inside a long compile, where Python's
    own handler would wait for the compile to end, and never lands in a callback that would swallow
    it. The process leaves with ``os._exit``: the interpreter's teardown can crash while compiler or
    checkpoint threads still run. That loses nothing: every run file is written atomically (a
    temporary file renamed into place; orbax renames a finished checkpoint folder), and a metrics
    line torn by the exit is skipped when the run is resumed. Hooks registered with
    :func:`jaxsplit.atomic.on_interrupt` run first (a sweep queues its running trials again), and
    renames that belong together (:func:`jaxsplit.atomic.uninterrupted`) finish. ``signals``: the
    signals so answered (a sweep's include SIGTERM, a batch scheduler's stop).
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signals))

    def wait() -> None:
        signal.sigwait(set(signals))
        from jaxsplit import atomic

        os.write(2, f"jaxsplit {name}: interrupted\n".encode())
        for hook in list(atomic.ON_INTERRUPT):  # e.g. a sweep queues its running trials again
            try:
                hook()
            except Exception:  # the exit must not wait on a hook that fails
                pass
        _silence_stderr()
        atomic.CRITICAL.acquire()  # renames that belong together finish first
        os._exit(EXIT_INTERRUPTED)

    threading.Thread(target=wait, name="ctrl-c", daemon=True).start()


#: Commands that end on Ctrl-C through KeyboardInterrupt instead (``run`` stops its worker processes).
#: ``sweep`` is answered by the Ctrl-C thread like the others, SIGTERM too; its hook marks the running
#: trials failed and queues them again in the study before the process exits.
KEYBOARD_INTERRUPT_COMMANDS = frozenset({"run"})
#: Signals answered like Ctrl-C, per command (default: SIGINT alone).
STOP_SIGNALS = {"sweep": frozenset({signal.SIGINT, signal.SIGTERM})}


def _import_command(name: str):
    try:
        import importlib

        return importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as err:
        raise ValueError(f"this command needs {err.name!r}, which is not installed") from None


def main(argv: Sequence[str] | None = None) -> int:
    argv_given = argv
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        near = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        print(f"jaxsplit: error: unknown command {name!r}; {hint}commands: {', '.join(COMMANDS)} "
              f"(jaxsplit --help)", file=sys.stderr)
        return 2
    if argv_given is None and name not in KEYBOARD_INTERRUPT_COMMANDS:
        _exit_on_ctrl_c(name, STOP_SIGNALS.get(name, frozenset({signal.SIGINT})))
    try:
        from jaxsplit import compile_cache
    except KeyboardInterrupt:  # a command that takes Ctrl-C as KeyboardInterrupt (run), still importing
        print(f"jaxsplit {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        rest, cache_dir, no_cache = compile_cache.split_options(rest)
    except ValueError as err:
        print(f"jaxsplit {name}: error: {err}", file=sys.stderr)
        return 2
    folder = None if name in UNCACHED else compile_cache.resolve(cache_dir, no_cache)
    with compile_cache.enabled(folder, f"jaxsplit {name}"):
        code = run_command(name, lambda: _import_command(name).main(rest))
    if argv_given is None and code != 0:
        # The process is ours (the console script) and failed or was stopped: leave without the
        # interpreter's teardown, which can crash or print thread tracebacks while XLA compiler,
        # checkpoint or rendezvous threads still run. Every run file is already complete on disk
        # (written atomically). After the one line, standard error is closed to those threads (a
        # failed checkpoint read leaves tensorstore callbacks that print "Event loop is closed").
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        _silence_stderr()
        atomic_critical()
        os._exit(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
