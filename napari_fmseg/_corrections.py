"""Corrective clicks on an in-context result, and keeping a corrected slice as a support.

Part of the In-context tool (:class:`~._incontext_widget.InContextWidget` holds one
:class:`CorrectionsPanel`). The workflow, with a backend that takes clicks (``auto``,
``incontext-prior``):

1. **Place clicks**: a Points layer "in-context corrections" on the image; green points are
   inside the structure, red ones (the "negative click" box ticked) are background.
2. **Correct slice**: every click on the slice shown, with the slice's current probabilities,
   goes to :func:`fmseg.incontext.correct.correct_slice` (in the worker); the corrected slice
   goes into the "in-context" output layer (undoable).
3. **Add corrected slice to support set**: the slice of the output layer joins the support set
   (:func:`~fmseg.incontext.correct.add_corrected_slice`, shown in the support panel) and the
   slices whose nearest annotations changed are segmented again and merged into the output.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw
from napari.layers import Points

from fmseg import Window
from fmseg.incontext import InContextResult, SupportSet, segment_volume_iter
from fmseg.incontext.correct import add_corrected_slice, correct_slice, pick_label, takes_clicks
from fmseg.incontext.prior import Clicks
from fmseg.progress import Progress, Work
from fmseg.report import describe_paths

from . import _layers as L
from ._controls import button_row
from ._output import Write, plan_on_slices, plan_write

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

    from fmseg.incontext import Backend

    from ._controls import StatusLine
    from ._output import OutputLayer
    from ._support import Query, SupportPanel
    from ._worker import JobRunner

CORRECTIONS_LAYER = "in-context corrections"
_ROWS = (
    (("Place clicks", "place_clicks"), ("Correct slice", "correct_slice")),
    (("Add corrected slice to support set", "add_to_support"),),
)
_TIPS = {
    "place_clicks": "click on the image: green = inside the structure, red = background",
    "correct_slice": "re-segment the slice shown with its clicks (Undo reverts)",
    "add_to_support": "keep the slice shown (as the output layer has it) as an annotated "
    "example and update the slices around it",
}


@dataclass
class LastRun:
    """The in-context result the corrections apply to (GUI thread only).

    Attributes:
        image: The image segmented.
        axis: Slicing axis.
        window: Intensity window of the run.
        source: The image's identity for slice positions.
        backend: The backend that made it.
        value: The label value asked for (0 = every label of the support set).
        probs: Label value -> probabilities on the image's grid (valid on ``done`` slices).
        done: Slice indices segmented so far.
    """

    image: Image
    axis: int
    window: Window
    source: str
    backend: Backend
    value: int
    probs: dict[int, np.ndarray] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)

    def fits(self, query: Query, backend: Backend) -> bool:
        """Whether a new result of ``query`` extends this one (same image, axis, backend)."""
        same = (query.image, query.axis, query.source, backend)
        return same == (self.image, self.axis, self.source, self.backend)

    def _at(self, slices: Any) -> tuple:
        where: list[Any] = [slice(None)] * 3
        where[self.axis] = slices
        return tuple(where)

    def store(self, result: InContextResult, slices: list[int]) -> None:
        """Keep the probabilities of ``slices`` (volume-shaped ``result``)."""
        for v, p in result.probs.items():
            if len(slices) == p.shape[self.axis]:
                self.probs[v] = p  # the whole volume: no copy
                continue
            if v not in self.probs:
                self.probs[v] = np.zeros_like(p)
            self.probs[v][self._at(slices)] = p[self._at(slices)]
        self.done.update(slices)

    def previous(self, label: int, index: int) -> np.ndarray | None:
        """The slice's current probabilities of ``label`` (None: not segmented yet)."""
        if label not in self.probs or index not in self.done:
            return None
        return np.take(self.probs[label], index, self.axis)

    def set_slice(self, label: int, index: int, probs: np.ndarray) -> None:
        """Replace one slice's probabilities (after a correction)."""
        if label not in self.probs:
            self.probs[label] = np.zeros(self.image.data.shape, np.float32)
        self.probs[label][self._at(index)] = probs
        self.done.add(index)


def clicks_on_slice(data: np.ndarray, positive: np.ndarray | None, axis: int, index: int) -> Clicks:
    """The points of a Points layer on slice ``index`` along ``axis``, as ``(row, col)``.

    Args:
        data: ``(N, 3)`` data coordinates ``(z, y, x)`` of the image.
        positive: ``(N,)`` flags, False for background clicks (None: all positive).
        axis: Slicing axis.
        index: Slice index.
    """
    zyx = L.as_zyx(data)
    flags = np.ones(len(zyx), bool) if positive is None else np.asarray(positive, bool)
    on = np.rint(zyx[:, axis]).astype(int) == index
    rc = np.delete(zyx, axis, axis=1)

    def points(mask: np.ndarray) -> tuple[tuple[float, float], ...]:
        return tuple((float(r), float(c)) for r, c in rc[mask])

    return Clicks(points(on & flags), points(on & ~flags))


def _region(shape: tuple[int, ...], axis: int, lo: int, hi: int) -> tuple[slice, ...]:
    region = [slice(0, n) for n in shape]
    region[axis] = slice(lo, hi)
    return tuple(region)


def _correct_work(
    run: LastRun, support: SupportSet, volume: np.ndarray, index: int, clicks: Clicks,
    label: int, target: Any,
) -> Work[tuple[np.ndarray, Write]]:  # fmt: skip
    """Correct one slice and plan its write into the output layer (worker)."""
    yield Progress(0, 1, f"correcting slice {index}")
    probs = correct_slice(
        run.backend, support, volume, run.axis, index, clicks, run.previous(label, index),
        run.window, label, run.source,
    )  # fmt: skip
    result = np.expand_dims((probs > 0.5).astype(np.int32) * label, run.axis)
    write = plan_write(target, _region(volume.shape, run.axis, index, index + 1), result, [label])
    return probs, write


def _resegment_work(
    run: LastRun, support: SupportSet, volume: np.ndarray, label: int, slices: list[int],
    target: Any, batch: int,
) -> Work[tuple[InContextResult, Write]]:  # fmt: skip
    """Segment ``slices`` again and plan their merge into the output layer (worker)."""
    result = yield from segment_volume_iter(
        run.backend, support, volume, run.axis, run.window, labels=[label], slices=slices,
        batch=batch, source=run.source,
    )  # fmt: skip
    lo, hi = min(slices), max(slices) + 1
    region = _region(volume.shape, run.axis, lo, hi)
    shape = [1, 1, 1]
    shape[run.axis] = hi - lo
    on = np.isin(np.arange(lo, hi), slices).reshape(shape)
    return result, plan_on_slices(target, region, on, result.labels[region] == label, label)


class CorrectionsPanel(mw.Container):
    """Clicks, "Correct slice" and "Add corrected slice to support set" of the In-context tool.

    Args:
        viewer: The napari viewer.
        panel: The support-set panel (its set grows; its list shows the new support).
        output: The tool's output layer (corrections are written there, undoably).
        jobs: The tool's job runner (one job at a time, progress, Cancel).
        status: The tool's status line.
        batch: Query slices per backend call when slices are segmented again.
    """

    def __init__(
        self, viewer: napari.viewer.Viewer, panel: SupportPanel, output: OutputLayer,
        jobs: JobRunner, status: StatusLine, batch: int = 4,
    ) -> None:  # fmt: skip
        super().__init__(label="corrections", labels=False)
        self.native.layout().setContentsMargins(0, 0, 0, 0)
        self._viewer, self._panel, self._output = viewer, panel, output
        self._jobs, self.status, self.batch = jobs, status, batch
        self.last: LastRun | None = None  # public: tests read it
        self._negative = mw.CheckBox(text="negative click (background)")
        self._negative.changed.connect(self._on_negative)
        self._rows = [button_row(self, row, _TIPS) for row in _ROWS]
        self.extend([self._negative, *self._rows])

    @property
    def buttons(self) -> list[mw.PushButton]:
        """The three buttons, in order."""
        return [b for row in self._rows for b in row]

    def set_backend(self, name: str) -> None:
        """Enable the buttons for backends that take clicks; else say why they are off."""
        ok = takes_clicks(name)
        for button, (_, method) in zip(self.buttons, [b for r in _ROWS for b in r], strict=True):
            button.enabled = ok
            why = f"'{name}' does not take corrective clicks: choose auto or incontext-prior"
            button.tooltip = _TIPS[method] if ok else why
        self._negative.enabled = ok

    def remember(self, query: Query, backend: Backend, result: InContextResult) -> None:
        """Keep a new result's probabilities (extending the last one when it fits)."""
        if self.last is None or not self.last.fits(query, backend):
            self.last = LastRun(
                query.image, query.axis, query.window, query.source, backend, query.value
            )
        slices = list(range(query.volume.shape[query.axis])) if query.whole else [query.index]
        self.last.store(result, slices)

    # -- the points layer -------------------------------------------------------------------
    def points(self) -> Points | None:
        """The corrections Points layer, or None while there is none."""
        found = [x for x in self._viewer.layers if isinstance(x, Points)]
        return next((x for x in found if x.name == CORRECTIONS_LAYER), None)

    def place_clicks(self) -> None:
        """Make (or pick) the corrections Points layer and switch to adding points."""
        image = self.last.image if self.last is not None else self._panel.volume_image()
        if image is None:
            return
        layer = self.points()
        if layer is None:
            kwargs = {**L.prompts_layer_kwargs(image), "name": CORRECTIONS_LAYER}
            layer = self._viewer.add_points(**kwargs)
        self._on_negative()
        self._viewer.layers.selection.active = layer
        layer.mode = "add"
        kind = "background (red)" if self._negative.value else "inside the structure (green)"
        self.status.say(f"Click {kind} on the slice to correct, then Correct slice.")

    def _on_negative(self, *_: Any) -> None:
        if (layer := self.points()) is not None:
            layer.feature_defaults[L.POSITIVE] = not self._negative.value

    def _clicks(self, axis: int, index: int) -> Clicks:
        layer = self.points()
        if layer is None or not len(layer.data):
            return Clicks()
        return clicks_on_slice(layer.data, layer.features[L.POSITIVE].to_numpy(), axis, index)

    # -- actions ----------------------------------------------------------------------------
    def _ready(self) -> tuple[LastRun, int, int] | None:
        """The run, the label and the slice shown, or None after saying why not."""
        if not self._jobs.idle():
            return None
        run = self.last
        if run is None:
            self.status.error("segment with auto first (Segment slice or volume), then correct")
            return None
        if not takes_clicks(run.backend):
            self.status.error(f"the result is from '{run.backend.name}', which takes no clicks")
            return None
        if run.image not in self._viewer.layers or (problem := self._output.problem(run.image)):
            self.status.error(problem if run.image in self._viewer.layers else "the image is gone")
            return None
        try:
            label = pick_label(self._panel.support, run.value or None)
        except ValueError as exc:
            self.status.error(str(exc))
            return None
        return run, label, L.slice_at(run.image, self._viewer.dims.point, run.axis)

    def correct_slice(self) -> None:
        """Re-segment the slice shown with its clicks (in the worker) into the output layer."""
        if (ready := self._ready()) is None:
            return
        run, label, index = ready
        clicks = self._clicks(run.axis, index)
        if not clicks:
            self.status.error(f"place clicks on slice {index} first (Place clicks)")
            return
        support = SupportSet(list(self._panel.support.examples), dict(self._panel.support.names))
        volume = np.asarray(run.image.data)
        work = _correct_work(run, support, volume, index, clicks, label, self._output.target())
        n = len(clicks.positive) + len(clicks.negative)
        done = functools.partial(self._on_corrected, run, label, index, n)
        self._jobs.run(work, f"correct slice {index}", done)

    def _on_corrected(self, run: LastRun, label: int, index: int, n: int, out: tuple) -> None:
        probs, write = out
        if run.image not in self._viewer.layers:
            self.status.error("the image was removed while correcting: result dropped")
            return
        run.set_slice(label, index, probs)
        changed = self._output.apply(write, run.image)
        self.status.say(
            f"Slice {index} corrected with {n} clicks: {changed} voxels changed"
            + (" (Undo reverts)" if changed else "")
            + ". Add it to the support set to update the slices around it."
        )

    def add_to_support(self) -> None:
        """Add the slice shown (from the output layer) to the support set; update the rest."""
        if (ready := self._ready()) is None:
            return
        run, label, index = ready
        if (layer := self._output.find()) is None:
            self.status.error(f"no '{self._output.name}' layer: segment first")
            return
        mask = np.take(np.asarray(layer.data), index, run.axis) == label
        volume = np.asarray(run.image.data)
        try:
            slices = add_corrected_slice(
                self._panel.support, volume, mask, run.axis, index, label, run.window, run.source
            )
        except ValueError as exc:
            self.status.error(str(exc))
            return
        self._panel.refresh_support_list()
        added = f"Slice {index} added: {len(self._panel.support)} in the support set"
        if not slices:
            self.status.say(f"{added}; no other slice changes.")
            return
        support = SupportSet(list(self._panel.support.examples), dict(self._panel.support.names))
        target = self._output.target()
        work = _resegment_work(run, support, volume, label, slices, target, self.batch)
        done = functools.partial(self._on_resegmented, run, slices, added)
        self._jobs.run(work, f"update {len(slices)} slices", done, kept=f"{added.lower()}")

    def _on_resegmented(self, run: LastRun, slices: list[int], added: str, out: tuple) -> None:
        result, write = out
        if run.image not in self._viewer.layers:
            self.status.error("the image was removed while segmenting: result dropped")
            return
        run.store(result, slices)
        changed = self._output.apply(write, run.image)
        paths = describe_paths(run.backend.name, result.path_counts())
        self.status.say(
            f"{added}; slices {slices[0]}-{slices[-1]} segmented again, {changed} voxels "
            f"changed" + (" (Undo reverts)" if changed else "") + (f". {paths}." if paths else ".")
        )
