"""The **In-context** tool: segment a volume from the support set of annotated slices.

The support set, the image and the annotations come from the :class:`~._support.SupportPanel`
(shared with the Uncertainty tool in the fmseg dock). Each run builds (or reuses) one of
:data:`fmseg.incontext.BACKENDS` and segments the current slice or the whole volume in a
worker (:class:`~._worker.JobRunner`); the result goes into the "in-context" Labels layer
(:class:`~._output.OutputLayer`, undoable), never into the annotations. With ``auto`` (the
default) the status line says how many slices took the prior path and how many the plain
in-context one; its results take corrective clicks (:class:`~._corrections.CorrectionsPanel`).
"Next slice to annotate" (:class:`~._suggest.SuggestPanel`) says which slice to annotate next.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw

from fmseg.incontext import BACKENDS, InContextResult, build_backend, segment_volume_iter
from fmseg.incontext.factory import DEFAULT_BACKEND
from fmseg.progress import Progress, Work
from fmseg.registry import ModelLoader, load_model
from fmseg.report import describe_paths
from fmseg.weights import WeightsError

from . import _layers as L
from ._controls import StatusLine, button_row
from ._corrections import CorrectionsPanel
from ._output import OutputLayer, Write, plan_write
from ._suggest import SuggestPanel
from ._support import Query, SupportPanel
from ._worker import JobRunner

if TYPE_CHECKING:
    import napari

    from fmseg.incontext import Backend

OUTPUT_LAYER = L.INCONTEXT_LAYER
_ROWS = (
    (("Segment slice", "segment_slice"), ("Segment volume", "segment")),
    (("Undo", "undo"), ("Cancel", "cancel")),
)


def _hint(exc: Exception) -> str:
    """Advice after a failure to load a network's weights ("" for other errors)."""
    if isinstance(exc.__cause__ or exc, WeightsError):
        return " (choose another backend, e.g. interpolation, or install the weights)"
    return ""


def _segment_work(
    get_backend: Callable[[], Backend], query: Query, target: Any, batch: int
) -> Work[tuple[Backend, Write, list[int], InContextResult]]:
    """Build (or reuse) the backend, segment, merge into ``target``: runs in the worker.

    Returns:
        The backend, the planned write, the label values found, the result.
    """
    yield Progress(0, 0, "loading the backend")
    backend = get_backend()
    result = yield from segment_volume_iter(
        backend, query.support, query.volume,
        labels=[query.value] if query.value else None, batch=batch, **query.volume_kwargs(),
    )  # fmt: skip
    yield Progress(0, 0, f"writing into '{OUTPUT_LAYER}'")
    labels = result.labels[query.region]
    write = plan_write(target, query.region, labels, sorted(result.probs))
    found = sorted(int(v) for v in np.unique(labels) if v)
    return backend, write, found, result


class InContextWidget(mw.Container):
    """In-context segmentation of the chosen image from a support set of annotated slices.

    Args:
        viewer: The napari viewer (npe2 passes it).
        load: How networks are built (None: :func:`fmseg.registry.load_model`, the real
            weights; :func:`fmseg.registry.load_tiny` in tests and demos without weights).
        backend_factory: Builds a backend, ``factory(name, ensemble=n)``; defaults to
            :func:`fmseg.incontext.build_backend` with ``load``.
        panel: The support-set panel to use (the dock shares one); by default its own.
    """

    batch = 4  # query slices per backend call: progress and cancel granularity

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        *,
        load: ModelLoader | None = None,
        backend_factory: Callable[..., Backend] | None = None,
        panel: SupportPanel | None = None,
    ) -> None:
        super().__init__(labels=False)  # the panel spans the width, the controls have labels
        self._viewer = viewer
        self.load = load or load_model  # public: the dock and tests read it
        self._factory = backend_factory or functools.partial(build_backend, load=self.load)
        self.status = StatusLine("Annotate a slice, then add it to the support set.")
        self.jobs = JobRunner(self.status, hint=_hint)
        self.output = OutputLayer(viewer, OUTPUT_LAYER, self.status)
        self.panel = panel or SupportPanel(viewer)
        self._backend: tuple[tuple[str, int], Backend] | None = None  # the last one built
        self._slot = mw.Container(labels=False)
        self._slot.native.layout().setContentsMargins(0, 0, 0, 0)
        self._backend_name = mw.ComboBox(
            label="backend", choices=list(BACKENDS), value=DEFAULT_BACKEND
        )
        self._backend_name.tooltip = "\n".join(f"{k}: {v}" for k, v in BACKENDS.items())
        self._ensemble = mw.SpinBox(label="ensemble", min=1, max=16, value=1)
        self._ensemble.tooltip = "random support subsets averaged (network backends)"
        rows = [button_row(self, row) for row in _ROWS]
        self.corrections = CorrectionsPanel(
            viewer, self.panel, self.output, self.jobs, self.status, self.batch
        )
        self._backend_name.changed.connect(self.corrections.set_backend)
        self.corrections.set_backend(self._backend_name.value)
        self.suggestions = SuggestPanel(
            viewer, self.panel, self.output, self.jobs, self.status, self._chosen_backend
        )
        controls = mw.Container(
            widgets=[self._backend_name, self._ensemble, *rows, self.suggestions, self.jobs.bar,
                     self.corrections]
        )  # fmt: skip
        controls.margins = (0, 0, 0, 0)
        self.extend([self._slot, controls, self.status])
        self.show_panel()

    @property
    def busy(self) -> bool:
        """True while a segmentation runs (or, cancelled, finishes its current step)."""
        return self.jobs.busy

    def show_panel(self) -> None:
        """Show the support-set panel here (the dock calls it when this tool comes in front)."""
        self.panel.host(self._slot, self.status)

    def segment_slice(self) -> None:
        """Segment the current slice along the slicing axis (in a worker)."""
        self._segment(whole=False)

    def segment(self) -> None:
        """Segment every slice of the volume along the slicing axis (in a worker)."""
        self._segment(whole=True)

    def _segment(self, whole: bool) -> None:
        if not self.jobs.idle() or (query := self.panel.query(whole, self.output)) is None:
            return
        key = (str(self._backend_name.value), int(self._ensemble.value))
        get = functools.partial(self._get_backend, key)
        work = _segment_work(get, query, self.output.target(), self.batch)
        name = query.name("segment")
        self.status.say(f"{name}: {key[0]} ...")
        self.jobs.run(work, name, functools.partial(self._on_result, query, key, name))

    def _chosen_backend(self) -> tuple[str, Callable[[], Backend]]:
        """The backend chosen now, and a getter that builds (or reuses) and keeps it."""
        key = (str(self._backend_name.value), int(self._ensemble.value))

        def get() -> Backend:
            backend = self._get_backend(key)
            self._backend = (key, backend)
            return backend

        return key[0], get

    def _get_backend(self, key: tuple[str, int]) -> Backend:
        """The cached backend for ``key``, or a new one (called in the worker)."""
        cached = self._backend
        if cached is not None and cached[0] == key:
            return cached[1]
        return self._factory(key[0], ensemble=key[1])

    def _on_result(self, query: Query, key: tuple[str, int], name: str, out: tuple) -> None:
        """Copy the planned write into the output layer (GUI thread)."""
        backend, write, found, result = out
        self._backend, image = (key, backend), query.image
        gone = image not in self._viewer.layers or image.data.shape != result.labels.shape
        if problem := "the image changed while segmenting" if gone else self.output.problem(image):
            self.status.error(f"{problem}: result dropped")
            return
        n = self.output.apply(write, image)
        self.corrections.remember(query, backend, result)
        paths = describe_paths(key[0], result.path_counts())
        self.status.say(
            f"{name}: labels {found} found with {key[0]}; {n} voxels of "
            f"'{OUTPUT_LAYER}' changed"
            + (" (Undo reverts)." if n else ".")
            + (f" {paths}." if paths else "")
        )

    def cancel(self) -> None:
        """Stop the running segmentation at its next batch; the output stays unchanged."""
        self.jobs.cancel()

    def undo(self) -> None:
        """Restore the output layer as it was before the last segmentation written to it."""
        if self.jobs.idle():
            self.output.undo()
