"""Long work as generators: yield :class:`Progress`, ``return`` the result (stardist style).

Front ends iterate in a worker thread (progress bar, cancel between yields); scripts and
tests call :func:`drain`, which runs the generator to the end and returns its result.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One step of long work.

    Attributes:
        done: Units finished.
        total: Units in all (0 when unknown).
        message: Short human-readable status.
    """

    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        """Completed fraction in [0, 1] (0 when the total is unknown)."""
        return self.done / self.total if self.total else 0.0


Work = Generator[Progress, None, T]


class Cancelled(Exception):
    """Raised by :func:`drain` when ``should_stop`` asks to stop."""


def drain(
    work: Work[T],
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> T:
    """Run a progress generator to completion and return its result.

    Args:
        work: Generator yielding :class:`Progress` and returning the result.
        on_progress: Called with each progress record.
        should_stop: Polled between steps; when it returns True the generator is closed
            and :class:`Cancelled` is raised.
    """
    while True:
        try:
            step = next(work)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(step)
        if should_stop is not None and should_stop():
            work.close()
            raise Cancelled("cancelled")
