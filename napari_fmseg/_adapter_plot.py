"""Helpers of the Adapt widget: its live training plot, layers as training data, apply plans.

:class:`TrainingPlot` is a plain ``QWidget`` that paints loss and validation Dice as two
polylines with ``QPainter``: no plotting library, and adding a point costs an append plus
``update()`` (Qt merges pending repaints, so the GUI thread does at most one cheap redraw per
frame however fast the trainer yields). :class:`Pair` and :func:`boxes_from_shapes` turn
napari layers into the core's training records and box prompts (no viewer, no Qt); which
slices count as labelled is the core's rule (:func:`fmseg.adapters.facade.labelled_slices`).
:func:`apply_plan` turns an applied adapter's probabilities into an undoable layer write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Shapes
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPaintEvent, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

from fmseg.adapters.data import Annotation
from fmseg.adapters.facade import THRESHOLD, labelled_slices
from fmseg.interactive.prompts import Box

from . import _layers as L
from ._output import Write, plan_on_slices

if TYPE_CHECKING:
    from fmseg.adapters.bases import AdaptedModel

LOSS_COLOUR = QColor(255, 160, 40)
DICE_COLOUR = QColor(60, 200, 255)
_AXIS = QColor(150, 150, 150)
_MARGIN = (34, 8, 34, 18)  # left, top, right, bottom (pixels): room for the tick labels


class TrainingPlot(QWidget):
    """Loss (left axis, auto-scaled) and validation Dice (right axis, 0-1) against the step.

    Args:
        parent: Parent widget.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.losses: list[tuple[int, float]] = []  # public: tests read them
        self.dices: list[tuple[int, float]] = []
        self.total = 0
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip("training loss (orange, left axis) and validation Dice (blue, right, 0-1)")

    def reset(self, total: int) -> None:
        """Forget the points; the step axis runs to ``total``."""
        self.losses.clear()
        self.dices.clear()
        self.total = max(int(total), 1)
        self.update()

    def add(self, step: int, loss: float, val_dice: float | None) -> None:
        """Add one training step (a Dice point only when it is a new validation)."""
        if math.isfinite(loss):
            self.losses.append((step, float(loss)))
        if val_dice is not None and (not self.dices or self.dices[-1][1] != val_dice):
            self.dices.append((step, float(val_dice)))
        self.update()

    def set_history(self, history: list[dict], total: int) -> None:
        """Show a whole training history (records with ``step``, ``loss``, ``val_dice``)."""
        self.reset(total)
        for record in history:
            self.add(int(record["step"]), float(record["loss"]), record.get("val_dice"))

    def _frame(self) -> QRectF:
        left, top, right, bottom = _MARGIN
        return QRectF(left, top, self.width() - left - right, self.height() - top - bottom)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt's name)
        """Draw the frame, ticks, both curves and a legend."""
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        font = QFont(painter.font())
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.8))
        painter.setFont(font)
        frame = self._frame()
        painter.setPen(QPen(_AXIS, 1))
        painter.drawRect(frame)
        hi = max((v for _, v in self.losses), default=1.0) or 1.0
        lo = min(0.0, min((v for _, v in self.losses), default=0.0))
        self._ticks(painter, frame, lo, hi)
        self._curve(painter, frame, self.losses, lo, hi, LOSS_COLOUR, dots=False)
        self._curve(painter, frame, self.dices, 0.0, 1.0, DICE_COLOUR, dots=True)
        legend = QRectF(frame.left(), frame.bottom() + 2, frame.width(), _MARGIN[3] - 2)
        centre = Qt.AlignmentFlag.AlignHCenter
        painter.setPen(LOSS_COLOUR)
        painter.drawText(legend.translated(-32, 0), centre, "loss")
        painter.setPen(DICE_COLOUR)
        painter.drawText(legend.translated(18, 0), centre, "val Dice")
        painter.end()

    def _ticks(self, painter: QPainter, frame: QRectF, lo: float, hi: float) -> None:
        left, right = Qt.AlignmentFlag.AlignRight, Qt.AlignmentFlag.AlignLeft
        v_centre = Qt.AlignmentFlag.AlignVCenter
        for frac in (0.0, 0.5, 1.0):
            y = frame.bottom() - frac * frame.height()
            painter.setPen(LOSS_COLOUR)
            box = QRectF(0, y - 7, frame.left() - 3, 14)
            painter.drawText(box, left | v_centre, f"{lo + frac * (hi - lo):.2g}")
            painter.setPen(DICE_COLOUR)
            box = QRectF(frame.right() + 3, y - 7, _MARGIN[2] - 3, 14)
            painter.drawText(box, right | v_centre, f"{frac:.1f}")
        painter.setPen(_AXIS)
        box = QRectF(frame.left(), frame.bottom() + 2, frame.width(), _MARGIN[3] - 2)
        painter.drawText(box, Qt.AlignmentFlag.AlignRight, f"step {self.total}")
        painter.drawText(box, Qt.AlignmentFlag.AlignLeft, "0")

    def _curve(
        self,
        painter: QPainter,
        frame: QRectF,
        points: list[tuple[int, float]],
        lo: float,
        hi: float,
        colour: QColor,
        dots: bool,
    ) -> None:
        if not points:
            return
        span, total = (hi - lo) or 1.0, max(self.total, points[-1][0], 1)
        stride = max(1, len(points) // max(int(frame.width()), 1))  # about one point per pixel
        poly = QPolygonF(
            [
                QPointF(
                    frame.left() + frame.width() * s / total,
                    frame.bottom() - frame.height() * (v - lo) / span,
                )
                for s, v in points[::stride]
            ]
        )
        painter.setPen(QPen(colour, 1.5))
        painter.drawPolyline(poly)
        if dots:
            painter.setBrush(colour)
            for i in range(poly.size()):
                painter.drawEllipse(poly.at(i), 2.5, 2.5)


@dataclass(frozen=True)
class Pair:
    """One training image: layers, label value, slicing axis, whole volume or labelled slices."""

    image: Image
    labels: Labels
    label: int
    axis: int
    whole: bool

    def slices(self) -> tuple[int, ...] | None:
        """The annotated slices now (None: the whole volume is annotated)."""
        return None if self.whole else labelled_slices(self.labels.data, self.axis)

    def problem(self) -> str:
        """Why this pair cannot be trained on ("" when it can)."""
        image, labels = self.image, self.labels
        if image.rgb or image.ndim not in (2, 3):
            return f"'{image.name}' is not a 2D or 3D single-channel image"
        if labels.data.shape != image.data.shape:
            return (
                f"'{labels.name}' {labels.data.shape} and '{image.name}' {image.data.shape} differ"
            )
        data = np.asarray(labels.data)
        data, axis = (data[None], 0) if data.ndim == 2 else (data, self.axis)
        slices = None if self.whole or image.ndim == 2 else labelled_slices(data, axis)
        if slices == ():
            return f"'{labels.name}' has no labelled slice along axis {axis}"
        part = data if slices is None else np.take(data, slices, axis)
        if not (part == self.label).any():
            present = [int(v) for v in np.unique(part) if v]
            return f"label value {self.label} is absent from '{labels.name}' (present: {present})"
        return ""

    def annotation(self) -> Annotation:
        """The core's training record (labels copied: the clinician may paint on)."""
        scale = tuple(float(s) for s in self.image.scale)
        whole = self.whole or self.image.ndim == 2
        return Annotation(
            np.asarray(self.image.data), np.array(self.labels.data), self.label,
            self.axis if self.image.ndim == 3 else 0, None if whole else self.slices(),
            ((1.0,) * (3 - len(scale)) + scale)[-3:],
        )  # fmt: skip

    def describe(self) -> str:
        """One line for the training list."""
        part = "whole volume" if self.whole else f"{len(self.slices() or ())} labelled slices"
        return (
            f"{self.image.name} / {self.labels.name}: label {self.label}, axis {self.axis}, {part}"
        )


def boxes_from_shapes(
    shapes: Shapes, image: Image, axis: int, slices: list[int] | None
) -> dict[int, Box]:
    """Boxes per slice of ``image`` along ``axis``: the last rectangle drawn on each slice.

    Vertices go through world coordinates, so the Shapes layer may have another scale.
    """
    vertices = []
    order = [axis, *(a for a in range(3) if a != axis)]  # slicing axis first, like (z, y, x)
    for shape in shapes.data:
        v = np.array([image.world_to_data(shapes.data_to_world(p)) for p in shape])
        vertices.append(v[:, order])
    plane = tuple(n for a, n in enumerate(image.data.shape) if a != axis)
    todo = range(image.data.shape[axis]) if slices is None else slices
    found = {s: L.box_on_slice(vertices, s, plane) for s in todo}
    return {s: b for s, b in found.items() if b is not None}


def describe_adapter(model: AdaptedModel, metrics: dict) -> str:
    """One line on an adapter: base, method, head, steps, trainable parameters, best Dice."""
    dice = metrics.get("best_val_dice")
    params = sum((metrics.get("trainable") or {}).values())
    return (
        f"Adapter: {model.base_id}, {model.config.method}, head {model.head_kind}; "
        f"{metrics.get('steps_run', '?')} steps, {params:,} trainable parameters, best "
        f"validation Dice {'n/a' if dice is None else f'{dice:.3f}'}"
    )


def apply_plan(
    target: Any, axis: int, done: np.ndarray, value: int, ndim: int, prob: np.ndarray
) -> tuple[Write, int, int]:
    """The write of the thresholded probability on the slices run (``done``), in the worker.

    Args:
        target: The output layer's data (None: no layer yet).
        axis: The slicing axis of ``prob`` (3D; a 2D image is one slice along axis 0).
        done: Boolean per slice along ``axis``: the slices run.
        value: The label value written.
        ndim: The image's number of dimensions (2 or 3).
        prob: ``(D0, D1, D2)`` foreground probability.

    Returns:
        The planned write, the number of voxels of ``value`` after it, the size of ``prob``.
    """
    run = np.flatnonzero(done)
    region = [slice(0, n) for n in prob.shape]  # explicit starts: the undo box needs them
    region[axis] = slice(int(run[0]), int(run[-1]) + 1)
    on = done[region[axis]].reshape([-1 if a == axis else 1 for a in range(3)])
    mask = prob[tuple(region)] > THRESHOLD
    if ndim == 2:  # the image is the one slice along axis 0
        region, on, mask = region[1:], on[0], mask[0]
    write = plan_on_slices(target, tuple(region), on, mask, value)
    return write, int(np.count_nonzero(write.result)), prob.size
