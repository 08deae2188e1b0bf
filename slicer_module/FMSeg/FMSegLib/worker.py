"""Run the core's progress generators in a background thread that the GUI polls.

No Qt here: the Widget starts a :class:`BackgroundTask` and polls it from a ``QTimer`` on the
main thread, where it updates the progress bar and, once done, writes results into MRML. The
work itself must not touch MRML or Qt (the Logic's ``*_iter`` methods only use numpy/torch).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator
from typing import Any

from fmseg import Cancelled, Progress, drain


class BackgroundTask:
    """One generator run to completion in a daemon thread.

    Args:
        work: Generator yielding :class:`~fmseg.progress.Progress` and returning a result.
        name: Thread name suffix (for debugging).
    """

    def __init__(self, work: Generator[Progress, None, Any], name: str = "work") -> None:
        self._work = work
        self._queue: queue.Queue[Progress] = queue.Queue()
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fmseg-{name}", daemon=True)
        self.result: Any = None
        self.error: BaseException | None = None
        self.cancelled = False

    def start(self) -> BackgroundTask:
        """Start the thread; returns self."""
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = drain(self._work, self._queue.put, self._stop.is_set)
        except Cancelled:
            self.cancelled = True
        except Exception as exc:  # reported to the GUI thread through .error
            self.error = exc
        finally:
            self._finished.set()

    def cancel(self) -> None:
        """Ask the work to stop at its next progress step."""
        self._stop.set()

    def poll(self) -> list[Progress]:
        """Progress records reported since the last poll (never blocks)."""
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    @property
    def done(self) -> bool:
        """True once the work has returned, failed or been cancelled."""
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done (tests and the in-app self-test); returns :attr:`done`."""
        return self._finished.wait(timeout)
