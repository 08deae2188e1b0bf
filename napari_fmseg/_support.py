"""The support-set panel: one support set, shared by the In-context and Uncertainty tools.

The clinician annotates a few slices in any Labels layer and adds them here (shown as
thumbnails); both tools segment or sample from the same :class:`~fmseg.incontext.SupportSet`,
so the set is built once. The panel also holds what both tools run on: the image, the
annotations, the label value and the slicing axis. The fmseg dock owns one panel and shows it
in whichever of the two tools is in front (:meth:`SupportPanel.host`).

Supports and queries share one intensity window: the image layer's contrast limits, i.e. what
the clinician sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from magicgui import widgets as mw
from napari.layers import Image
from qtpy.QtCore import QSize
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import QAbstractItemView, QListWidget, QListWidgetItem

from fmseg import Window
from fmseg.incontext import SupportSet, add_slice

from . import _layers as L
from ._controls import StatusLine, annotations_box, button_row, layer_box, qt_panel
from ._dialogs import ask_then

if TYPE_CHECKING:
    import napari

    from ._output import OutputLayer

THUMB = 64  # thumbnail size (pixels, longest side)
_LIST_ROWS = 2.5  # thumbnails visible without scrolling the list
_PALETTE = np.array(
    [[255, 60, 60], [60, 200, 255], [255, 210, 0], [80, 255, 80], [255, 80, 255], [60, 90, 255]],
    dtype=np.float32,
)
_ROW = (("Remove", "remove_selected"), ("Clear", "clear"), ("Save...", "save_dialog"))
_ROW += (("Load...", "load_dialog"),)
_TIPS = {
    "remove_selected": "remove the examples selected in the list (Shift/Ctrl for several)",
    "save_dialog": "save the support set (name.npz arrays + name.json metadata)",
    "load_dialog": "replace the support set by a saved one (works across volumes)",
}
Region = tuple[slice, ...]


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


def _icon(rgb: np.ndarray) -> QIcon:
    h, w, _ = rgb.shape
    image = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()  # owns its bytes
    return QIcon(QPixmap.fromImage(image))


def source(image: Image) -> str:
    """Cheap identity of a layer's volume for matching slice positions.

    The layer name and data object: no hashing of the whole volume on the GUI thread.
    """
    return f"napari:{image.name}:{id(image.data):x}"


@dataclass(frozen=True)
class Query:
    """What one In-context or Uncertainty run works on (read on the GUI thread, then fixed).

    Attributes:
        image: The 3D image layer.
        volume: Its data, ``(D, H, W)``.
        value: The label value (0 = every label of the support set).
        axis: The slicing axis.
        index: The current slice along ``axis``.
        whole: Run every slice along ``axis``, not only the current one.
        support: A snapshot of the support set (later edits do not reach the worker).
        window: The intensity window (the image's contrast limits when the run started).
        source: The image's identity for matching support positions.
    """

    image: Image
    volume: np.ndarray
    value: int
    axis: int
    index: int
    whole: bool
    support: SupportSet
    window: Window
    source: str

    @property
    def region(self) -> Region:
        """The slices run (explicit starts): the whole volume, or the current slice only."""
        region = [slice(0, n) for n in self.volume.shape]
        if not self.whole:
            region[self.axis] = slice(self.index, self.index + 1)
        return tuple(region)

    def name(self, verb: str) -> str:
        """The job's name: ``"<verb> volume"`` or ``"<verb> slice <index>"``."""
        return f"{verb} volume" if self.whole else f"{verb} slice {self.index}"

    def volume_kwargs(self) -> dict:
        """Keyword arguments of the core's ``*_volume_iter`` for this query."""
        return {
            "axis": self.axis,
            "window": self.window,
            "slices": None if self.whole else [self.index],
            "source": self.source,
        }


class SupportPanel(mw.Container):
    """Image, annotations, label value, slicing axis, and the support set built from them.

    Args:
        viewer: The napari viewer.
        status: The status line it reports to (the host tool's; see :meth:`host`).
    """

    def __init__(self, viewer: napari.viewer.Viewer, status: StatusLine | None = None) -> None:
        super().__init__()
        self.native.layout().setContentsMargins(0, 0, 0, 0)
        self._viewer = viewer
        self.status = status or StatusLine()
        self.support = SupportSet()
        self._image = layer_box(viewer, "image", Image, exclude=L.UNCERTAINTY_IMAGES)
        self._annotations = annotations_box(viewer)
        self._label = mw.SpinBox(label="label value (0 = all)", min=0, max=65535, value=0)
        self._axis = mw.ComboBox(label="slicing axis", choices=L.AXES, value=0)
        add = mw.PushButton(text="Add current slice to support set")
        add.changed.connect(self.add_current_slice)
        self.support_list = QListWidget()  # public: tests read it
        self.support_list.setIconSize(QSize(THUMB, THUMB))
        self.support_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.support_list.setMinimumHeight(int(_LIST_ROWS * (THUMB + 4)) + 4)
        self.support_list.setMaximumHeight(4 * THUMB + 24)
        self.extend([self._image, self._annotations, self._label, self._axis, add])
        self.extend([qt_panel("support set", self.support_list), button_row(self, _ROW, _TIPS)])

    def host(self, slot: mw.Container, status: StatusLine) -> None:
        """Show the panel in a tool's ``slot`` and report to that tool's status line."""
        slot.native.layout().addWidget(self.native)
        self.status = status

    def current_slice(self) -> int:
        """Index along the slicing axis of the slice the viewer shows (of the chosen image)."""
        return L.slice_at(self._image.value, self._viewer.dims.point, self._axis.value)

    def volume_image(self) -> Image | None:
        """The chosen image when it is a 3D layer, else None (after telling the user why)."""
        image = self._image.value
        if image is None:
            self.status.error("open an image first (File > Open, or File > Open Sample > fmseg)")
        elif image.ndim != 3 or image.rgb:
            self.status.error(f"'{image.name}' is not a 3D single-channel volume")
        else:
            return image
        return None

    def add_current_slice(self) -> bool:
        """Add the current slice of the image and annotations to the support set.

        Returns:
            Whether a slice was added (else the status line says why).
        """
        if (image := self.volume_image()) is None:
            return False
        if (labels := self._annotations.value) is None:
            return self.status.error("add or choose a Labels layer with the annotated slice first")
        axis, index, value = self._axis.value, self.current_slice(), int(self._label.value)
        try:
            add_slice(
                self.support, np.asarray(image.data), np.asarray(labels.data), axis, index,
                window=L.contrast_window(image), label=value or None, source=source(image),
            )  # fmt: skip
        except ValueError as exc:
            return self.status.error(str(exc))
        self.refresh_support_list()
        n = len(self.support)
        self.status.say(f"Added slice {index} (axis {axis}): {n} in the support set.")
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
            self.status.error("select examples in the support-set list first")
            return
        for i in rows:
            self.support.remove(i)
        self.refresh_support_list()
        self.status.say(f"Removed {len(rows)}: {len(self.support)} in the support set.")

    def clear(self) -> None:
        """Remove every example from the support set."""
        self.support.clear()
        self.refresh_support_list()
        self.status.say("Support set cleared.")

    def save_support(self, path: str) -> bool:
        """Write the support set to ``path`` (``.npz`` arrays plus ``.json`` metadata)."""
        if not len(self.support):
            return self.status.error("the support set is empty: nothing to save")
        try:
            written = self.support.save(path)
        except (OSError, ValueError) as exc:
            return self.status.error(f"could not save the support set: {exc}")
        self.status.say(f"Saved {len(self.support)} examples to {written}.")
        return True

    def load_support(self, path: str) -> bool:
        """Replace the support set by the one saved at ``path``."""
        try:
            self.support = SupportSet.load(path)
        except (OSError, ValueError, KeyError) as exc:
            return self.status.error(f"could not load the support set: {exc}")
        self.refresh_support_list()
        self.status.say(f"Loaded {len(self.support)} examples from {path}.")
        return True

    def save_dialog(self) -> None:
        """Ask for a file name, then :meth:`save_support`."""
        ask_then(self.native, "Save support set", "*.npz", self.save_support, save=True)

    def load_dialog(self) -> None:
        """Ask for a support-set file, then :meth:`load_support`."""
        ask_then(self.native, "Load support set", "*.npz", self.load_support)

    def query(self, whole: bool, output: OutputLayer) -> Query | None:
        """The run on the current slice (or the whole volume), or None after saying why not.

        Args:
            whole: Run every slice along the axis, not only the current one.
            output: The tool's output layer, which must fit the image.
        """
        if (image := self.volume_image()) is None:
            return None
        value, present = int(self._label.value), self.support.label_values
        if not present:
            problem = "the support set is empty: add at least one annotated slice"
        elif value and value not in present:
            problem = f"label {value} is not in the support set: {present}"
        else:
            problem = output.problem(image)
        if problem:
            self.status.error(problem)
            return None
        snapshot = SupportSet(list(self.support.examples), dict(self.support.names))
        return Query(
            image, np.asarray(image.data), value, self._axis.value, self.current_slice(), whole,
            snapshot, L.contrast_window(image), source(image),
        )  # fmt: skip
