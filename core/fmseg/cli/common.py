"""What every command shares: one-line user errors, the progress printer, argument types."""

from __future__ import annotations

import argparse
import sys

from ..adapters.trainer import TrainStep
from ..device import choose_device
from ..progress import Progress


class CliError(Exception):
    """A mistake of the user's, reported as one line on stderr with exit code 2."""


class Coordinate(float):
    """A float from the command line that prints exactly as it was typed (``"40"``, ``"1e2"``)."""

    text: str

    def __str__(self) -> str:
        return self.text


def coordinate(text: str) -> Coordinate:
    """Argument type of voxel coordinates, so that messages echo them as typed."""
    value = Coordinate(text)
    value.text = text.strip()
    return value


def add_window(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    """``--window LOW HIGH``: the intensity window, alike in every command."""
    parser.add_argument("--window", type=float, nargs=2, metavar=("LOW", "HIGH"), help=help_text)


def device_choice(text: str) -> str | None:
    """Argument type of ``--device``: refuses what :func:`fmseg.device.choose_device` refuses.

    Returns ``None`` for ``auto`` (the model loaders then choose, and say what they chose),
    else the name given.
    """
    try:
        choose_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return None if text.strip().lower() == "auto" else text.strip().lower()


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device``, alike in every command."""
    parser.add_argument(
        "--device",
        type=device_choice,
        default="auto",
        help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N or mps",
    )


def parse_slices(text: str) -> list[int]:
    """``"10,20,30-32"`` -> ``[10, 20, 30, 31, 32]``."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        a, _, b = part.partition("-")
        try:
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
        except ValueError:
            raise ValueError(f"bad slice list '{text}': use e.g. 10,20,30-34") from None
    return out


def print_progress(step: Progress) -> None:
    """Overwrite the current stderr line with ``step`` (training steps: loss and Dice)."""
    if isinstance(step, TrainStep):
        text = f"{step.describe()}   "
    else:
        text = f"{step.message} ({100 * step.fraction:.0f}%)"
    print(f"\r{text}", end="", file=sys.stderr, flush=True)


def one_line(err: BaseException) -> str:
    """The error's message on one line (library messages sometimes span several)."""
    return " ".join(str(err).split())
