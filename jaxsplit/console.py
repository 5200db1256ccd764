"""A rich console for tables: full width on a terminal, wide enough when output is redirected."""

from __future__ import annotations

import sys


def make_console(stderr: bool = False):
    """A ``rich.console.Console``; 160 columns when not writing to a terminal, so tables never elide."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 160
    console = Console(file=stream, width=width)

    def broken_pipe() -> None:  # rich would exit 1; the command line reports it as 141 (jaxsplit.cli)
        raise BrokenPipeError

    console.on_broken_pipe = broken_pipe
    return console
