"""The ``ccexpert`` command.

Each subcommand lives in its own module under :mod:`ccexpert_cli.commands` with a ``register(subparsers)``
function; heavy imports happen inside the command's handler, so ``ccexpert --help`` stays fast.
A :class:`~ccexpert_core.errors.CCExpertError` becomes one line on stderr and its exit code (2; 3 for a run that
ended with failed tiles).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence
from typing import NoReturn

from ccexpert_cli import commands
from ccexpert_core import __version__
from ccexpert_core.errors import CCExpertError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake said in one line that points at ``--help`` (not the whole usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand found in :mod:`ccexpert_cli.commands`."""
    parser = _Parser(
        prog="ccexpert", description="Describe in plain language what changed between two images of the same place."
    )
    parser.add_argument("--version", action="version", version=f"ccexpert {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage mistake already said in one line
        return int(stop.code or 0)
    # Library chatter (load reports, generation hints) is not for users; our own notes are warnings, one line each.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return int(args.handler(args) or 0)
    except CCExpertError as error:
        print(f"ccexpert {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): nothing left to say to it.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"ccexpert {args.command}: interrupted; work finished so far is kept.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
