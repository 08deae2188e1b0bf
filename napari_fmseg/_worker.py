"""Run fmseg's long work (progress generators) in worker threads, and the tools' job runner.

fmseg's long operations are generators that yield :class:`~fmseg.progress.Progress` and return
their result (``Session.embed_volume_iter``, ``Session.propagate_iter``, ...). :func:`run_work`
iterates one in a worker thread (the ``GeneratorWorker`` behind napari's ``thread_worker``): the
GUI thread only receives signals (progress, result, error), so it never waits on the model, and
``worker.quit()`` cancels between two yields. :func:`call_work` turns a plain call (loading a
model, decoding prompts) into such a generator, :func:`then` adds a last step (merging a result
into a layer's labels) to the same worker. :class:`JobRunner` is the part every fmseg tool
holds: one job at a time, a progress bar, Cancel, and done / cancelled / error on its status
line.

The worker is superqt's class, built directly rather than through napari's ``create_worker``:
in napari 0.9.2 that connects ``errored`` to a two-argument callback (a ``TypeError`` in the
event loop whenever work fails), and napari's subclass also posts every error as a traceback
notification, while callers here report errors to the user in their own words. Workers run in
fmseg's own thread pool, not in Qt's global one: that one has as many threads as CPU cores (2
on a small laptop), so with the background encoding and one job running, a third job (or
napari's own workers) waited in its queue, and a Cancel there could only take effect when a
thread came free, minutes later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from magicgui import widgets as mw
from qtpy.QtCore import QCoreApplication, QThreadPool
from superqt.utils import GeneratorWorker

from fmseg.progress import Progress, Work

if TYPE_CHECKING:
    from ._status import StatusLine

T = TypeVar("T")
U = TypeVar("U")
POOL_THREADS = 16  # more than fmseg ever runs at once: a job never waits for a thread
_pool: QThreadPool | None = None
_live: set[GeneratorWorker] = set()  # started workers, kept alive until they finish


class WorkError(Exception):
    """A ``RuntimeError`` raised by the work (superqt would return it as a result instead)."""


def call_work(func: Callable[[], T], message: str = "") -> Work[T]:
    """A one-step progress generator running ``func()`` (in the worker thread)."""
    yield Progress(0, 0, message)
    return func()


def then(work: Work[T], finish: Callable[[T], U], message: str = "") -> Work[U]:
    """``work``, then ``finish(result)`` in the same worker thread (after one more yield)."""
    result = yield from work
    yield Progress(0, 0, message)
    return finish(result)


def _guarded(work: Work[T]) -> Work[T]:
    try:
        result = yield from work
    except RuntimeError as exc:  # superqt's worker returns RuntimeErrors as results
        raise WorkError(str(exc) or type(exc).__name__) from exc
    return result


def _show_progress(bar: Any, step: Progress | None) -> None:
    """Put a progress record on a magicgui ``ProgressBar`` (busy indicator when total is 0).

    ``None`` hides the bar. A bar deleted meanwhile (its viewer closed while the work was
    finishing its last step) is left alone.
    """
    try:
        if step is None:
            bar.visible = False
            return
        bar.max = max(step.total, 0)
        bar.value = min(step.done, step.total) if step.total else 0
    except RuntimeError:  # the Qt widget behind the bar no longer exists
        pass


def thread_pool() -> QThreadPool:
    """The thread pool of fmseg's workers (a child of the application: it ends with it)."""
    global _pool
    if _pool is None:
        _pool = QThreadPool(QCoreApplication.instance())
        _pool.setMaxThreadCount(POOL_THREADS)
    return _pool


class _Worker(GeneratorWorker):
    """superqt's generator worker, started in :func:`thread_pool` instead of Qt's global pool."""

    def start(self) -> None:
        _live.add(self)
        self.finished.connect(lambda: _live.discard(self))
        thread_pool().start(self)

    def take_back(self) -> bool:
        """Remove the worker from the pool's queue if it has not started; True if removed."""
        if not thread_pool().tryTake(self):
            return False
        _live.discard(self)
        return True


def run_work(
    work: Work[T],
    *,
    on_done: Callable[[T], None] | None = None,
    on_error: Callable[[Exception], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_cancelled: Callable[[], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    progress_bar: Any = None,
    start: bool = True,
) -> GeneratorWorker:
    """Iterate ``work`` in a worker thread and report back on the GUI thread.

    Every callback runs on the GUI thread. Cancel with ``worker.quit()``: the work stops at its
    next yield, is closed, and ``on_cancelled`` runs instead of ``on_done``.

    Args:
        work: Generator yielding :class:`~fmseg.progress.Progress` and returning a result.
        on_done: Called with the result when the work completes.
        on_error: Called with the exception the work raised (``RuntimeError`` arrives as
            :class:`WorkError`); without it errors are dropped, so pass one.
        on_progress: Called with each progress record.
        on_cancelled: Called after a cancel.
        on_finished: Called last in every case (done, error or cancel).
        progress_bar: A magicgui ``ProgressBar`` (or anything with ``max``/``value``/
            ``visible``) shown while the work runs.
        start: Start the worker now; pass False to connect more signals first (a worker
            can finish before a later ``connect``), then call ``worker.start()``.

    Returns:
        The worker.
    """
    worker = _Worker(_guarded, work)
    if progress_bar is not None:
        progress_bar.visible = True
        _show_progress(progress_bar, Progress(0, 0))
        worker.yielded.connect(lambda step: _show_progress(progress_bar, step))
        worker.finished.connect(lambda: _show_progress(progress_bar, None))
    if on_progress is not None:
        worker.yielded.connect(on_progress)
    if on_done is not None:
        worker.returned.connect(on_done)
    if on_error is not None:
        worker.errored.connect(on_error)
    worker.aborted.connect(work.close)
    if on_cancelled is not None:
        worker.aborted.connect(on_cancelled)
    if on_finished is not None:
        worker.finished.connect(on_finished)
    if start:
        worker.start()
    return worker


class JobRunner:
    """One job at a time for a tool: a worker, its progress bar, Cancel, and status messages.

    A job is a core progress generator. While it runs, its progress messages go to the status
    line (``"<name>: <message>"``); then the status line says how it ended: the tool's
    ``on_done`` writes the result and says so, ``"<name> cancelled: <kept>."`` as soon as a
    cancelled worker stops, or ``"Error: <name> failed: <why><hint>"``.

    Args:
        status: The tool's status line.
        label: Label of the progress bar (:attr:`bar`, hidden while idle).
        hint: Advice appended to an error message (e.g. how to get missing weights).
    """

    def __init__(
        self,
        status: StatusLine,
        label: str = "progress",
        hint: Callable[[Exception], str] | None = None,
    ) -> None:
        self.status = status
        self.bar = mw.ProgressBar(label=label, visible=False)
        self.name = ""
        self._hint = hint or (lambda exc: "")
        self._worker: Any = None
        self._stopping: set[Any] = set()  # stopped workers still finishing their step
        self.bar.native.destroyed.connect(lambda *_: self.stop())  # the tool was closed

    @property
    def running(self) -> bool:
        """True while a job runs (a new one must wait)."""
        return self._worker is not None

    @property
    def busy(self) -> bool:
        """True while any worker of this runner is alive (running, or stopped and finishing)."""
        return self._worker is not None or bool(self._stopping)

    def idle(self) -> bool:
        """True when a new job can start; else says which job runs and returns False."""
        if self._worker is None:
            return True
        return self.status.error(f"{self.name} is still running: wait for it, or press Cancel")

    def run(
        self,
        work: Work[T],
        name: str,
        on_done: Callable[[T], None],
        *,
        on_progress: Callable[[Progress], None] | None = None,
        on_finished: Callable[[], None] | None = None,
        kept: str = "nothing was changed",
    ) -> None:
        """Start ``work`` in a worker (the caller checked :meth:`idle`).

        Args:
            work: The core's progress generator.
            name: What the job is, for the status line ("segment volume").
            on_done: Called with the result (GUI thread).
            on_progress: Called with each progress record instead of showing its message.
            on_finished: Called last, however the job ended (not after :meth:`stop`).
            kept: What a cancel leaves in place, for the status line.
        """
        mine = lambda f: lambda *a: self._worker is worker and f(*a)  # noqa: E731
        worker = run_work(
            work,
            on_done=mine(on_done),
            on_error=mine(lambda exc: self.status.error(f"{name} failed: {exc}{self._hint(exc)}")),
            on_progress=mine(on_progress or (lambda s: self.status.say(f"{name}: {s.message}"))),
            on_cancelled=mine(lambda: self.status.say(f"{name} cancelled: {kept}.")),
            start=False,
        )
        worker.yielded.connect(mine(lambda step: _show_progress(self.bar, step)))
        worker.finished.connect(lambda: self._finished(worker, on_finished))
        self._worker, self.name = worker, name
        _show_progress(self.bar, Progress(0, 0))
        self.bar.visible = True
        worker.start()

    def _finished(self, worker: Any, on_finished: Callable[[], None] | None) -> None:
        self._stopping.discard(worker)
        if worker is not self._worker:
            return  # stopped: its replacement owns the bar and the status line
        self._worker = None
        _show_progress(self.bar, None)
        if on_finished is not None:
            on_finished()

    def cancel(self, quiet: bool = False) -> bool:
        """Ask the job to stop at its next step; False when there is none.

        The status line says ``"Cancelling ..."`` until the worker stops, then that it was
        cancelled. A job still queued for a thread stops at once. Without a job it says
        "Nothing to cancel." unless ``quiet``.
        """
        worker = self._worker
        if worker is None:
            if not quiet:
                self.status.say("Nothing to cancel.")
            return False
        worker.quit()
        if worker.take_back():  # never started: no signal will come, end it here
            worker.aborted.emit()
            worker.finished.emit()
        else:
            self.status.say(f"Cancelling {self.name} (it stops after its current step) ...")
        return True

    def stop(self) -> None:
        """Cancel the job and forget it: a new job may start while it finishes its step."""
        if (worker := self._worker) is None:
            return
        self._worker = None
        self._stopping.add(worker)
        worker.quit()
        _show_progress(self.bar, None)
        if worker.take_back():
            worker.finished.emit()
