"""The ``jaxsplit`` command line.

Each subcommand lives in its own module and exposes ``main(argv) -> int``; this dispatcher imports
it lazily (so ``jaxsplit zoo`` never imports torch or the agents). Every bad input is reported as
``jaxsplit <command>: error: ...`` on standard error with exit status 2, without a traceback.

Commands that compile JAX programs run with JAX's persistent compilation cache on
(:mod:`jaxsplit.compile_cache`; ``--cache-dir DIR``, ``--no-cache`` or ``JAXSPLIT_CACHE_DIR`` move it
or turn it off).
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Sequence

from jaxsplit import compile_cache

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


def run_command(name: str, body: Callable[[], int]) -> int:
    """Run ``body`` and turn a ValueError into a one-line error with exit status 2."""
    try:
        return body()
    except ValueError as err:
        print(f"jaxsplit {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxsplit {name}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"jaxsplit: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        rest, cache_dir, no_cache = compile_cache.split_options(rest)
    except ValueError as err:
        print(f"jaxsplit {name}: error: {err}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        print(f"jaxsplit {name}: error: this command needs {err.name!r}, which is not installed", file=sys.stderr)
        return 2
    folder = None if name in UNCACHED else compile_cache.resolve(cache_dir, no_cache)
    with compile_cache.enabled(folder, f"jaxsplit {name}"):
        return run_command(name, lambda: module.main(rest))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
