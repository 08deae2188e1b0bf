"""The ``fmseg`` parser and entry point: each command's module registers itself and runs.

A user's mistake (a missing or damaged file, an output that cannot be written, a prompt off
the image) ends as one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..device import DEVICE_LOG
from . import adapt, batch, incontext, models, segment, suggest, uncertainty
from .common import CliError, one_line

#: In the order ``fmseg --help`` lists them.
COMMANDS = (models, segment, incontext, suggest, adapt, uncertainty, batch)

#: Errors that are the user's to fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (CliError, ValueError, OSError, RuntimeError, IndexError)


def build_parser() -> argparse.ArgumentParser:
    """The ``fmseg`` parser with every sub-command; ``args.run(args)`` runs the chosen one."""
    p = argparse.ArgumentParser(
        prog="fmseg",
        description="Command line: ``fmseg segment``, ``incontext``, ``suggest``, "
        "``uncertainty``, ``adapt``, ``batch``, ``models``.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fmseg`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    shown, log = _DeviceLines(), logging.getLogger(DEVICE_LOG)
    level = log.level
    log.addHandler(shown)
    log.setLevel(logging.INFO)
    try:
        args.run(args)
    except USER_ERRORS as err:
        print(f"fmseg: error: {one_line(err)}", file=sys.stderr)
        return 2
    finally:
        log.removeHandler(shown)
        log.setLevel(level)
    return 0


class _DeviceLines(logging.Handler):
    """Prints where models run (``fmseg: running on cpu (4 threads): ...``), each device once."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        text = getattr(record, "device", None) or record.getMessage()
        if text not in self.seen:
            self.seen.add(text)
            print(f"fmseg: {text}", file=sys.stderr)
