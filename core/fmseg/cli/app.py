"""The ``fmseg`` parser and entry point: each command's module registers itself and runs.

A user's mistake (a missing or damaged file, an output that cannot be written, a prompt off
the image) ends as one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from . import adapt, incontext, models, segment, suggest, uncertainty
from .common import CliError, one_line

#: In the order ``fmseg --help`` lists them.
COMMANDS = (models, segment, incontext, suggest, adapt, uncertainty)

#: Errors that are the user's to fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (CliError, ValueError, OSError, RuntimeError, IndexError)


def build_parser() -> argparse.ArgumentParser:
    """The ``fmseg`` parser with every sub-command; ``args.run(args)`` runs the chosen one."""
    p = argparse.ArgumentParser(
        prog="fmseg",
        description="Command line: ``fmseg segment``, ``incontext``, ``suggest``, "
        "``uncertainty``, ``adapt``, ``models``.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fmseg`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except USER_ERRORS as err:
        print(f"fmseg: error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0
