"""Subcommands of the ``jaxsplit`` command line (one module each, ``main(argv) -> int``)."""
