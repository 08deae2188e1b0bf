"""Run fmseg's long work (progress generators) in a napari worker thread.

fmseg's long operations are generators that yield :class:`~fmseg.progress.Progress` and return
their result (``Session.embed_volume_iter``, ``Session.propagate_iter``, ...). :func:`run_work`
iterates one in a worker thread (the ``GeneratorWorker`` behind napari's ``thread_worker``): the
GUI thread only receives signals (progress, result, error), so it never waits on the model, and
``worker.quit()`` cancels between two yields. :func:`call_work` turns a plain call (loading a
model, decoding prompts) into such a generator.

The worker is superqt's class, built directly rather than through napari's ``create_worker``:
in napari 0.9.2 that connects ``errored`` to a two-argument callback (a ``TypeError`` in the
event loop whenever work fails), and napari's subclass also posts every error as a traceback
notification, while callers here report errors to the user in their own words.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from superqt.utils import GeneratorWorker

from fmseg.progress import Progress, Work

T = TypeVar("T")


class WorkError(Exception):
    """A ``RuntimeError`` raised by the work (superqt would return it as a result instead)."""


def call_work(func: Callable[[], T], message: str = "") -> Work[T]:
    """A one-step progress generator running ``func()`` (in the worker thread)."""
    yield Progress(0, 0, message)
    return func()


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
    worker = GeneratorWorker(_guarded, work)
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
