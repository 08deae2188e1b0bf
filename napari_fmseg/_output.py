"""The output-layer part of the fmseg tools: a named Labels layer that results go into, undoably.

Writing a result is split in two. :func:`plan_write` runs in the worker, as the job's last
step: it merges the result into a copy of the layer's region (the result's label values are
replaced, other labels kept) and keeps only the box of voxels that change, with their old
values. :meth:`OutputLayer.apply` then runs on the GUI thread and only copies that box: on a
clinical volume the merge, ``np.unique`` and the undo copy took seconds on the GUI thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels

from . import _layers as L

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

    from ._controls import StatusLine

Region = tuple[slice, ...]
UNDO_DEPTH = 10


@dataclass(frozen=True)
class Write:
    """A result merged into a layer's labels, ready to copy in (see :func:`plan_write`).

    Attributes:
        target: The array the merge read (None: a new layer of zeros).
        region: Absolute slices the result covers.
        result: The result's labels in ``region`` (0 = none).
        values: The label values the result decides within ``region``.
        box: The box (absolute slices) of the voxels that change; None when none do.
        new: The labels of ``box`` after the write.
        old: The labels of ``box`` before it (the undo record).
        changed: How many voxels change.
    """

    target: Any
    region: Region
    result: np.ndarray
    values: tuple[int, ...]
    box: Region | None = None
    new: np.ndarray | None = None
    old: np.ndarray | None = None
    changed: int = 0


def changed_box(changed: np.ndarray, region: Region) -> Region:
    """The bounding box (absolute) of the ``True`` voxels of ``changed``, which is ``region``."""
    box = []
    for ax, part in enumerate(region):
        hit = np.flatnonzero(changed.any(axis=tuple(a for a in range(changed.ndim) if a != ax)))
        box.append(slice(part.start + int(hit[0]), part.start + int(hit[-1]) + 1))
    return tuple(box)


def plan_write(target: Any, region: Region, result: np.ndarray, values: Sequence[int]) -> Write:
    """Merge ``result`` into ``target[region]``: ``values`` there are replaced, others kept.

    Pure (reads ``target``, writes nothing), so it runs in the worker thread.

    Args:
        target: The output layer's data, or None for a layer not made yet (zeros).
        region: Absolute slices with explicit starts; ``result`` has its shape.
        result: Labels of the result (0 = none).
        values: Label values the result decides within ``region``.
    """
    plan = Write(target, region, result, tuple(int(v) for v in values))
    old = np.zeros(result.shape, np.int32) if target is None else np.asarray(target[region])
    merged = np.where(np.isin(old, plan.values), 0, old).astype(old.dtype)
    merged[result > 0] = result[result > 0]
    changed = merged != old
    if not changed.any():
        return plan
    box = changed_box(changed, region)
    local = tuple(
        slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, region, strict=True)
    )
    n = int(changed.sum())
    return replace(plan, box=box, new=merged[local], old=old[local].copy(), changed=n)


def plan_on_slices(
    target: Any, region: Region, on: np.ndarray, mask: np.ndarray, value: int
) -> Write:
    """Write ``mask`` as label ``value`` on the slices run; elsewhere its voxels stay (worker).

    Args:
        target: The output layer's data, or None for a layer not made yet.
        region: Absolute slices the mask covers.
        on: Boolean, broadcasting over ``region``: True on the slices that were run.
        mask: Boolean result over ``region``.
        value: The label value written.
    """
    kept = np.zeros(mask.shape, bool) if target is None else np.asarray(target[region]) == value
    return plan_write(target, region, np.where(on, mask, kept).astype(np.int32) * value, [value])


class OutputLayer:
    """A Labels layer named ``name`` on an image's grid, written by one tool, with undo.

    The layer is made when the first result arrives (with the image's scale, translate,
    affine and metadata, so the fmseg writer saves it with the image's geometry) and reused
    while one of that name exists; the tool's inputs are never written.

    Args:
        viewer: The napari viewer.
        name: The layer's name.
        status: The tool's status line (undo reports there).
        opacity: Opacity of a new layer.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        name: str,
        status: StatusLine,
        opacity: float = 0.5,
    ) -> None:
        self._viewer = viewer
        self.name = name
        self.status = status
        self.opacity = opacity
        self._undo: list[tuple[Labels, Region, np.ndarray]] = []
        viewer.layers.events.removed.connect(self._forget)

    def find(self) -> Labels | None:
        """The output layer, or None while there is none."""
        return next(
            (x for x in self._viewer.layers if x.name == self.name and isinstance(x, Labels)),
            None,
        )

    def target(self) -> Any:
        """The output layer's data, for :func:`plan_write` (None while there is no layer)."""
        layer = self.find()
        return None if layer is None else layer.data

    def problem(self, image: Image) -> str:
        """Why results for ``image`` cannot go into the output layer ("" when they can)."""
        layer = self.find()
        if layer is None or layer.data.shape == image.data.shape:
            return ""
        return f"the '{self.name}' layer has another shape than '{image.name}': rename it"

    def ensure(self, image: Image) -> Labels:
        """The output layer, made on ``image``'s grid if absent."""
        layer = self.find()
        return self.create(image) if layer is None else layer

    def create(self, image: Image, data: np.ndarray | None = None) -> Labels:
        """A new output layer on ``image``'s grid, holding ``data`` (default: zeros)."""
        zeros = np.zeros(image.data.shape, np.int32) if data is None else data
        metadata = L.labels_metadata(image.metadata)
        return self._viewer.add_labels(
            zeros, name=self.name, opacity=self.opacity, metadata=metadata, **L.geometry(image)
        )

    def apply(self, write: Write, image: Image) -> int:
        """Copy a planned write into the layer (made if absent) and keep its undo record.

        If the layer changed since the plan (replaced, or made meanwhile), the merge is done
        again here, on the GUI thread. Returns the number of voxels changed.
        """
        new_layer = self.find() is None
        layer = self.ensure(image)
        if layer.data is not write.target and not (new_layer and write.target is None):
            write = plan_write(layer.data, write.region, write.result, write.values)
        if write.box is None:
            return 0
        self._undo = [*self._undo[-(UNDO_DEPTH - 1) :], (layer, write.box, write.old)]
        layer.data[write.box] = write.new
        layer.refresh()
        return write.changed

    def undo(self) -> bool:
        """Restore the layer as it was before the last write (says so); False if none."""
        if not self._undo:
            return self.status.error("nothing to undo")
        layer, box, old = self._undo.pop()
        layer.data[box] = old
        layer.refresh()
        self.status.say(f"Undone: '{layer.name}' restored ({len(self._undo)} more undo steps).")
        return True

    def _forget(self, event: Any) -> None:
        self._undo = [u for u in self._undo if u[0] is not event.value]
