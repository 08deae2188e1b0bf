"""The Segment tool's background embedding: nearest the viewed slice first, kept on disk.

Composed into :class:`~._widget.SegmentWidget` (two hooks: the widget builds one
:class:`Prefetch` and calls :meth:`Prefetch.start` when its session is ready). The core's
:class:`fmseg.interactive.prefetch.Prefetcher` runs in the widget's background
:class:`~._worker.JobRunner` (progress bar, Cancel); moving through the slices re-focuses it
(a lock held for microseconds on the GUI thread), so the slice the user looks at is encoded
next and a box or click there decodes without waiting for the encoder.

Embeddings are kept on disk by content hash (:func:`fmseg.interactive.prefetch.
attach_disk_cache`, ``$FMSEG_CACHE/embeddings``) when the session's predictor has registry
weights; set ``FMSEG_EMBEDDING_DISK=0`` to keep them in memory only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from fmseg.interactive.prefetch import Prefetcher, attach_disk_cache
from fmseg.interactive.session import Session
from fmseg.progress import Progress

from ._worker import JobRunner

#: Environment switch: "0" keeps embeddings in memory only.
DISK_ENV = "FMSEG_EMBEDDING_DISK"


def disk_wanted() -> bool:
    """True unless ``FMSEG_EMBEDDING_DISK=0``."""
    return os.environ.get(DISK_ENV, "1") != "0"


class Prefetch:
    """Background embedding of a session's slices along axis 0, following the viewer.

    Args:
        viewer: The napari viewer (its ``dims`` events re-focus the embedding).
        runner: The background job runner (progress bar, Cancel).
        current_slice: Returns the viewed slice index along axis 0.
        disk: Keep embeddings on disk (None: :func:`disk_wanted`).
    """

    def __init__(
        self,
        viewer: Any,
        runner: JobRunner,
        current_slice: Callable[[], int],
        disk: bool | None = None,
    ) -> None:
        self._viewer = viewer
        self.runner = runner
        self._current = current_slice
        self.disk = disk_wanted() if disk is None else disk
        self.prefetcher: Prefetcher | None = None
        self.last: Progress | None = None
        viewer.dims.events.current_step.connect(self._on_step)

    def start(self, session: Session) -> None:
        """Attach the disk cache (registry sessions) and embed every slice in the background."""
        self.runner.stop()
        if self.disk and not session.model_name.startswith("predictor-"):
            attach_disk_cache(session)  # registry weights: a stable name, keyed by their hash
        self.prefetcher = Prefetcher(session, 0, self._current())
        self.runner.run(
            self.prefetcher.run_iter(), "encoding", self._done,
            on_progress=self._progress, kept="the slices encoded are kept",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop embedding (the slices done are kept)."""
        self.runner.stop()
        self.prefetcher = None

    def _on_step(self, event: Any = None) -> None:
        if self.prefetcher is not None:
            self.prefetcher.focus(0, self._current())

    def _progress(self, step: Progress) -> None:
        self.last = step

    def _done(self, computed: int) -> None:
        self.prefetcher = None
