"""The ``ccexpert`` command: the command line over the library (:mod:`ccexpert_core`, importable without it).

Each subcommand lives in :mod:`ccexpert_cli.commands`; :func:`main` parses and runs one.
"""

from ccexpert_cli.main import main

__all__ = ["main"]
