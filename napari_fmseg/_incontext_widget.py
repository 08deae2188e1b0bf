"""The **In-context** dock widget: segment a volume from a support set of annotated slices.

The clinician annotates a few slices in any Labels layer, adds them to a support set (shown
as thumbnails), and segments the current slice or the whole volume with one of
:data:`fmseg.incontext.BACKENDS`. Supports and queries share one intensity window: the image
layer's contrast limits, i.e. what the clinician sees. Backends are built and run in a worker
(:mod:`._worker`); results go into the "in-context" Labels layer, undoably, never into the
layer the supports come from.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw
from napari.layers import Image, Labels
from qtpy.QtCore import QSize
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import QAbstractItemView, QListWidget, QListWidgetItem

from fmseg.incontext import BACKENDS, SupportSet, add_slice, build_backend, segment_volume_iter
from fmseg.progress import Progress, Work
from fmseg.weights import WeightsError

from . import _layers as L
from ._dialogs import ask_path
from ._status import StatusContainer
from ._worker import run_work

if TYPE_CHECKING:
    import napari

    from fmseg.incontext import Backend, InContextResult

OUTPUT_LAYER = "in-context"
THUMB = 64  # thumbnail size (pixels, longest side)
AXES = (("0 (z)", 0), ("1 (y)", 1), ("2 (x)", 2))
UNDO_DEPTH = 10
_PALETTE = np.array(
    [[255, 60, 60], [60, 200, 255], [255, 210, 0], [80, 255, 80], [255, 80, 255], [60, 90, 255]],
    dtype=np.float32,
)
Region = tuple[slice, ...]
_ROWS = (  # button rows (text, method) below the support set, and below the backend
    (
        (("Remove selected", "remove_selected"), ("Clear", "clear")),
        (("Save...", "save_dialog"), ("Load...", "load_dialog")),
    ),
    (
        (("Segment slice", "segment_slice"), ("Segment volume", "segment")),
        (("Undo", "undo"), ("Cancel", "cancel")),
    ),
)


def thumbnail(image: np.ndarray, labels: np.ndarray, size: int = THUMB) -> np.ndarray:
    """RGB ``uint8`` thumbnail, longest side ``size``: the [0, 1] image in grey, labels tinted."""
    scale = size / max(image.shape)
    rows, cols = (
        np.minimum((np.arange(max(1, round(n * scale))) / scale).astype(int), n - 1)
        for n in image.shape
    )
    img, lab = image[np.ix_(rows, cols)], labels[np.ix_(rows, cols)]
    rgb = np.repeat(np.clip(img, 0, 1)[..., None] * 255, 3, axis=2).astype(np.float32)
    inside = lab > 0
    rgb[inside] = 0.45 * rgb[inside] + 0.55 * _PALETTE[(lab[inside] - 1) % len(_PALETTE)]
    return np.ascontiguousarray(rgb.round().astype(np.uint8))


def _window(image: Image) -> tuple[float, float]:
    """The intensity window of supports and queries: the layer's contrast limits."""
    return tuple(float(v) for v in image.contrast_limits)


def _source(image: Image) -> str:
    """Cheap identity of a layer's volume for matching slice positions.

    The layer name and data object: no hashing of the whole volume on the GUI thread.
    """
    return f"napari:{image.name}:{id(image.data):x}"


def _hint(exc: Exception) -> str:
    """Advice after a failure to load a network's weights ("" for other errors)."""
    if isinstance(exc.__cause__ or exc, WeightsError):
        return " (choose another backend, e.g. interpolation, or install the weights)"
    return ""


def _icon(rgb: np.ndarray) -> QIcon:
    h, w, _ = rgb.shape
    image = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()  # owns its bytes
    return QIcon(QPixmap.fromImage(image))


def _changed_box(changed: np.ndarray, region: Region) -> Region:
    """The bounding box (absolute) of the ``True`` voxels of ``changed``, which is ``region``."""
    box = []
    for ax, part in enumerate(region):
        hit = np.flatnonzero(changed.any(axis=tuple(a for a in range(changed.ndim) if a != ax)))
        box.append(slice(part.start + int(hit[0]), part.start + int(hit[-1]) + 1))
    return tuple(box)


def _segment_work(
    get_backend: Callable[[], Backend], support: SupportSet, volume: np.ndarray, **kwargs: Any
) -> Work[tuple[Backend, InContextResult]]:
    """Build (or reuse) the backend, then segment: runs in the worker thread."""
    yield Progress(0, 0, "loading the backend")
    backend = get_backend()
    result = yield from segment_volume_iter(backend, support, volume, **kwargs)
    return backend, result


class InContextWidget(StatusContainer):
    """In-context segmentation of the chosen image from a support set of annotated slices.

    Args:
        viewer: The napari viewer (npe2 passes it).
        tiny: Use tiny random-weight networks (tests and demos without weights).
        backend_factory: Builds a backend, ``factory(name, ensemble=n)``; defaults to
            :func:`fmseg.incontext.build_backend`.
    """

    batch = 4  # query slices per backend call: progress and cancel granularity

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        *,
        tiny: bool = False,
        backend_factory: Callable[..., Backend] | None = None,
    ) -> None:
        super().__init__()
        self._viewer = viewer
        self._factory = backend_factory or functools.partial(build_backend, tiny=tiny)
        self.support = SupportSet()
        self._backend: tuple[tuple[str, int], Backend] | None = None  # the last one built
        self._job: Any = None
        self._job_name = ""
        self._undo: list[tuple[Labels, Region, np.ndarray]] = []
        self._build()

    def _build(self) -> None:
        self._image = mw.ComboBox(label="image", choices=self._image_choices)
        self._labels = mw.ComboBox(label="annotations", choices=self._labels_choices)
        self._label = mw.SpinBox(label="label value (0 = all)", min=0, max=65535, value=0)
        self._axis = mw.ComboBox(label="slicing axis", choices=AXES, value=0)
        add = mw.PushButton(text="Add current slice to support set")
        add.changed.connect(self.add_current_slice)
        self.support_list = QListWidget()  # public: tests read it
        self.support_list.setIconSize(QSize(THUMB, THUMB))
        self.support_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.support_list.setMinimumHeight(4 * THUMB + 24)
        panel = mw.Container(label="support set", labels=False)
        panel.native.layout().setContentsMargins(0, 0, 0, 0)
        panel.native.layout().addWidget(self.support_list)
        self._backend_name = mw.ComboBox(
            label="backend", choices=list(BACKENDS), value="incontext-small"
        )
        self._backend_name.tooltip = "\n".join(f"{k}: {v}" for k, v in BACKENDS.items())
        self._ensemble = mw.SpinBox(label="ensemble", min=1, max=16, value=1)
        self._ensemble.tooltip = "random support subsets averaged (network backends)"
        self._bar = mw.ProgressBar(label="progress", visible=False)
        self.status = mw.Label(value="Annotate a slice, then add it to the support set.")
        self.status.native.setWordWrap(True)
        rows = [[self._row(r) for r in rows] for rows in _ROWS]
        self.extend(
            [self._image, self._labels, self._label, self._axis, add, panel, *rows[0]]
            + [self._backend_name, self._ensemble, *rows[1], self._bar, self.status]
        )
        self._viewer.layers.events.inserted.connect(self._reset_layer_choices)
        self._viewer.layers.events.removed.connect(self._on_layer_removed)

    def _row(self, row: tuple[tuple[str, str], ...]) -> mw.Container:
        buttons = [mw.PushButton(text=text) for text, _ in row]
        for button, (_, method) in zip(buttons, row, strict=True):
            button.changed.connect(lambda *_, m=method: getattr(self, m)())
        return mw.Container(widgets=buttons, layout="horizontal", labels=False)

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(lay.name, lay) for lay in self._viewer.layers if isinstance(lay, Image)]

    def _labels_choices(self, _widget: Any = None) -> list[tuple[str, Labels]]:
        layers = self._viewer.layers
        return [(x.name, x) for x in layers if isinstance(x, Labels) and x.name != OUTPUT_LAYER]

    def _reset_layer_choices(self, *_: Any) -> None:
        self._image.reset_choices()
        self._labels.reset_choices()

    def _on_layer_removed(self, event: Any) -> None:
        self._reset_layer_choices()
        self._undo = [u for u in self._undo if u[0] is not event.value]

    @property
    def busy(self) -> bool:
        """True while a segmentation runs (or, cancelled, finishes its current step)."""
        return self._job is not None

    def _volume_image(self) -> Image | None:
        """The chosen image when it is a 3D layer, else None (after telling the user why)."""
        image = self._image.value
        if image is None:
            self._error("open an image first (File > Open, or File > Open Sample > fmseg)")
        elif image.ndim != 3 or image.rgb:
            self._error(f"'{image.name}' is not a 3D single-channel volume")
        else:
            return image
        return None

    def current_slice(self) -> int:
        """Index along the slicing axis of the slice the viewer shows (of the chosen image)."""
        image = self._image.value
        if image is None or image.ndim != 3:
            return 0
        pos = image.world_to_data(self._viewer.dims.point)[self._axis.value]
        return int(np.clip(round(float(pos)), 0, image.data.shape[self._axis.value] - 1))

    def add_current_slice(self) -> bool:
        """Add the current slice of the image and annotations to the support set.

        Returns:
            Whether a slice was added (else the status line says why).
        """
        if (image := self._volume_image()) is None:
            return False
        if (labels := self._labels.value) is None:
            self._error("add or choose a Labels layer with the annotated slice first")
            return False
        axis, index, value = self._axis.value, self.current_slice(), int(self._label.value)
        try:
            add_slice(
                self.support, np.asarray(image.data), np.asarray(labels.data), axis, index,
                window=_window(image), label=value or None, source=_source(image),
            )  # fmt: skip
        except ValueError as exc:
            self._error(str(exc))
            return False
        self.refresh_support_list()
        self._say(f"Added slice {index} (axis {axis}): {len(self.support)} in the support set.")
        return True

    def refresh_support_list(self) -> None:
        """Redraw the thumbnails and captions of the support set."""
        self.support_list.clear()
        for ex in self.support.examples:
            values = [int(v) for v in np.unique(ex.labels) if v != 0]
            where = f"axis {ex.axis}, slice {ex.index}" if ex.axis >= 0 else "unknown slice"
            icon = _icon(thumbnail(ex.image, ex.labels))
            self.support_list.addItem(QListWidgetItem(icon, f"{where}, labels {values}"))

    def remove_selected(self) -> None:
        """Remove the examples selected in the support-set list."""
        rows = sorted({i.row() for i in self.support_list.selectedIndexes()}, reverse=True)
        if not rows:
            self._error("select examples in the support-set list first")
            return
        for i in rows:
            self.support.remove(i)
        self.refresh_support_list()
        self._say(f"Removed {len(rows)}: {len(self.support)} in the support set.")

    def clear(self) -> None:
        """Remove every example from the support set."""
        self.support.clear()
        self.refresh_support_list()
        self._say("Support set cleared.")

    def save_support(self, path: str) -> bool:
        """Write the support set to ``path`` (``.npz`` arrays plus ``.json`` metadata)."""
        if not len(self.support):
            self._error("the support set is empty: nothing to save")
            return False
        try:
            written = self.support.save(path)
        except (OSError, ValueError) as exc:
            self._error(f"could not save the support set: {exc}")
            return False
        self._say(f"Saved {len(self.support)} examples to {written}.")
        return True

    def load_support(self, path: str) -> bool:
        """Replace the support set by the one saved at ``path``."""
        try:
            self.support = SupportSet.load(path)
        except (OSError, ValueError, KeyError) as exc:
            self._error(f"could not load the support set: {exc}")
            return False
        self.refresh_support_list()
        self._say(f"Loaded {len(self.support)} examples from {path}.")
        return True

    def save_dialog(self) -> None:
        """Ask for a file name, then :meth:`save_support`."""
        if path := ask_path(self.native, "Save support set", "*.npz", save=True):
            self.save_support(path)

    def load_dialog(self) -> None:
        """Ask for a support-set file, then :meth:`load_support`."""
        if path := ask_path(self.native, "Load support set", "*.npz"):
            self.load_support(path)

    def segment_slice(self) -> None:
        """Segment the current slice along the slicing axis (in a worker)."""
        self._segment(whole=False)

    def segment(self) -> None:
        """Segment every slice of the volume along the slicing axis (in a worker)."""
        self._segment(whole=True)

    def _run_context(self, whole: bool) -> tuple[Image, int, int, int, list[slice]] | None:
        """``(image, label value, axis, slice index, region)`` of a run, or None (said why)."""
        if self._job is not None:
            self._error(f"{self._job_name} is still running: wait for it, or press Cancel")
            return None
        if (image := self._volume_image()) is None:
            return None
        value = int(self._label.value)
        if problem := self._problem(image, value):
            self._error(problem)
            return None
        axis, index = self._axis.value, self.current_slice()
        region = [slice(0, n) for n in image.data.shape]
        if not whole:
            region[axis] = slice(index, index + 1)
        return image, value, axis, index, region

    def _segment(self, whole: bool) -> None:
        if (ctx := self._run_context(whole)) is None:
            return
        image, value, axis, index, region = ctx
        key = (str(self._backend_name.value), int(self._ensemble.value))
        work = _segment_work(
            functools.partial(self._get_backend, key),
            SupportSet(list(self.support.examples), dict(self.support.names)),  # a snapshot
            np.asarray(image.data),
            axis=axis,
            window=_window(image),
            labels=[value] if value else None,
            slices=None if whole else [index],
            source=_source(image),
            batch=self.batch,
        )
        name = "segment volume" if whole else f"segment slice {index}"
        self._say(f"{name}: {key[0]} ...")
        done = functools.partial(self._on_result, image, tuple(region), key)
        self._launch(work, name, done)

    def _problem(self, image: Image, value: int) -> str:
        """Why segmenting ``image`` for label ``value`` cannot start ("" when it can)."""
        present = self.support.label_values
        if not present:
            return "the support set is empty: add at least one annotated slice"
        if value and value not in present:
            return f"label {value} is not in the support set: {present}"
        return self._output_problem(image)

    def _get_backend(self, key: tuple[str, int]) -> Backend:
        """The cached backend for ``key``, or a new one (called in the worker)."""
        cached = self._backend
        if cached is not None and cached[0] == key:
            return cached[1]
        return self._factory(key[0], ensemble=key[1])

    def _launch(self, work: Work, name: str, on_done: Callable[[Any], None]) -> None:
        worker = run_work(
            work,
            on_done=on_done,
            on_error=lambda exc: self._error(f"{name} failed: {exc}{_hint(exc)}"),
            on_progress=lambda step: self._say(f"{name}: {step.message}"),
            on_cancelled=lambda: self._say(f"{name} cancelled: the output is unchanged."),
            progress_bar=self._bar,
            start=False,
        )
        worker.finished.connect(lambda: setattr(self, "_job", None))  # one job at a time
        self._job, self._job_name = worker, name
        worker.start()

    def cancel(self) -> None:
        """Stop the running segmentation at its next batch; the output stays unchanged."""
        if self._job is None:
            self._say("Nothing to cancel.")
            return
        self._job.quit()
        self._say("Cancelling ...")

    def _output_layer(self) -> Labels | None:
        layers = self._viewer.layers
        return next((x for x in layers if x.name == OUTPUT_LAYER and isinstance(x, Labels)), None)

    def _output_problem(self, image: Image) -> str:
        """Why the result for ``image`` cannot go into the output layer ("" when it can)."""
        layer = self._output_layer()
        if layer is None or layer.data.shape == image.data.shape:
            return ""
        return f"the '{OUTPUT_LAYER}' layer has another shape than '{image.name}': rename it"

    def _on_result(
        self, image: Image, region: Region, key: tuple[str, int], out: tuple[Any, Any]
    ) -> None:
        """Write the result's ``region`` into the output layer (GUI thread)."""
        backend, result = out
        self._backend = (key, backend)
        gone = image not in self._viewer.layers or image.data.shape != result.labels.shape
        if problem := "the image changed while segmenting" if gone else self._output_problem(image):
            self._error(f"{problem}: result dropped")
            return
        if (layer := self._output_layer()) is None:
            zeros = np.zeros(image.data.shape, np.int32)
            kwargs = {**L.geometry(image), "metadata": L.labels_metadata(image.metadata)}
            layer = self._viewer.add_labels(zeros, name=OUTPUT_LAYER, opacity=0.5, **kwargs)
        n = self._write(layer, region, result.labels[region], sorted(result.probs))
        found = sorted(int(v) for v in np.unique(result.labels[region]) if v)
        self._say(
            f"{self._job_name}: labels {found} found with {key[0]}; {n} voxels of "
            f"'{OUTPUT_LAYER}' changed" + (" (Undo reverts)." if n else ".")
        )

    def _write(self, layer: Labels, region: Region, new: np.ndarray, values: list[int]) -> int:
        """Replace ``values`` in ``region`` of ``layer`` by ``new``; keeps an undo record."""
        old = np.asarray(layer.data[region])
        merged = np.where(np.isin(old, values), 0, old).astype(old.dtype)
        merged[new > 0] = new[new > 0]
        changed = merged != old
        if not changed.any():
            return 0
        box = _changed_box(changed, region)
        self._undo = [*self._undo[-(UNDO_DEPTH - 1) :], (layer, box, np.array(layer.data[box]))]
        layer.data[region] = merged
        layer.refresh()
        return int(changed.sum())

    def undo(self) -> None:
        """Restore the output layer as it was before the last segmentation written to it."""
        if self._job is not None:
            self._error(f"{self._job_name} is still running: wait for it, or press Cancel")
            return
        if not self._undo:
            self._error("nothing to undo")
            return
        layer, box, old = self._undo.pop()
        layer.data[box] = old
        layer.refresh()
        self._say(f"Undone: '{layer.name}' restored ({len(self._undo)} more undo steps).")
