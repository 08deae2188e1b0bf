"""The In-context tool's "Next slice to annotate": which slice helps most, and why.

Part of the In-context tool (:class:`~._incontext_widget.InContextWidget` holds one
:class:`SuggestPanel`). **Next slice to annotate** ranks the unannotated slices of the image
along the slicing axis (:func:`fmseg.incontext.suggest.suggest_slices_iter`, in the worker,
with the tool's backend), jumps the viewer to the best one and says why on the status line.
The result segmented from every support along the way goes into the "in-context" output layer
(undoable). After the clinician annotates that slice, **Add it and suggest next** adds it to the
support set and runs the suggestion again, which also updates the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw

from fmseg.incontext.suggest import Suggestions, suggest_slices_iter
from fmseg.progress import Progress, Work

from ._controls import button_row
from ._output import Write, plan_write

if TYPE_CHECKING:
    import napari

    from fmseg.incontext import Backend

    from ._controls import StatusLine
    from ._output import OutputLayer
    from ._support import Query, SupportPanel
    from ._worker import JobRunner

#: ``() -> (backend name, getter)``: the getter builds or reuses the backend (in the worker).
BackendChoice = Callable[[], tuple[str, Callable[[], "Backend"]]]
_ROW = (("Next slice to annotate", "suggest"), ("Add it and suggest next", "add_and_suggest"))
_TIPS = {
    "suggest": "rank the slices not annotated yet (disagreement, distance from annotations, "
    "predicted extent) and show the best one",
    "add_and_suggest": "add the slice shown to the support set, then suggest the next one",
}


def _suggest_work(
    get_backend: Callable[[], Backend], query: Query, target: Any
) -> Work[tuple[Suggestions, Write, float]]:
    """Rank the slices and plan writing the current result (runs in the worker)."""
    yield Progress(0, 0, "loading the backend")
    backend = get_backend()
    t0 = time.perf_counter()
    res = yield from suggest_slices_iter(
        backend, query.support, query.volume, query.axis, query.window, query.value or None,
        query.source,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    labels = (res.probs > 0.5).astype(np.int32) * res.label
    return res, plan_write(target, query.region, labels, [res.label]), seconds


class SuggestPanel(mw.Container):
    """The "Next slice to annotate" row of the In-context tool.

    Args:
        viewer: The napari viewer.
        panel: The support-set panel (image, axis, label value, support set).
        output: The tool's output layer (the current result is written there).
        jobs: The tool's job runner.
        status: The tool's status line.
        backend: The tool's backend choice (:data:`BackendChoice`).
    """

    def __init__(
        self, viewer: napari.viewer.Viewer, panel: SupportPanel, output: OutputLayer,
        jobs: JobRunner, status: StatusLine, backend: BackendChoice,
    ) -> None:  # fmt: skip
        super().__init__(labels=False)
        self.native.layout().setContentsMargins(0, 0, 0, 0)
        self._viewer, self._panel, self._output = viewer, panel, output
        self._jobs, self.status, self._backend = jobs, status, backend
        self.last: Suggestions | None = None  # public: tests read it
        self.seconds = 0.0  # how long the last ranking took
        self.extend([button_row(self, _ROW, _TIPS)])

    def suggest(self) -> None:
        """Rank the unannotated slices in the worker; then jump to the best one."""
        if not self._jobs.idle():
            return
        if (query := self._panel.query(True, self._output)) is None:
            return
        name, get = self._backend()
        self.status.say(f"Ranking the slices along axis {query.axis} with {name} ...")
        work = _suggest_work(get, query, self._output.target())
        self._jobs.run(work, "next slice", lambda out: self._on_ranked(query, name, out))

    def add_and_suggest(self) -> None:
        """Add the slice shown to the support set, then :meth:`suggest` the next one."""
        if self._jobs.idle() and self._panel.add_current_slice():
            self.suggest()

    def _on_ranked(self, query: Query, name: str, out: tuple) -> None:
        res, write, self.seconds = out
        image = query.image
        if image not in self._viewer.layers or self._output.problem(image):
            self.status.error("the image changed while ranking: suggestion dropped")
            return
        self.last = res
        self._output.apply(write, image)
        best = res.best
        if best is None:
            self.status.say(f"Every slice along axis {res.axis} is annotated.")
            return
        self.jump(image, res.axis, best.index)
        self.status.say(
            f"Next slice to annotate: {best.index} (axis {res.axis}): {best.reason}. "
            f"Annotate it, then 'Add it and suggest next'. ({name}, {len(res.annotated)} "
            f"annotated, {self.seconds:.1f} s; the result is in '{self._output.name}'.)"
        )

    def jump(self, image: Any, axis: int, index: int) -> None:
        """Show slice ``index`` along data ``axis`` of ``image`` (other axes unchanged)."""
        data = np.asarray(image.world_to_data(self._viewer.dims.point), float)
        data[axis] = index
        world = image.data_to_world(data)
        offset = self._viewer.dims.ndim - len(world)  # the image's axes are the last ones
        self._viewer.dims.set_point(offset + axis, float(world[axis]))
