"""Next slice to annotate in the FMSeg module: the core's ranking, a slice view moved there.

GUI-free, in the read -> work -> write split of :class:`~FMSegLib.logic.FMSegLogic`:

* **work** (any thread): :func:`suggest_iter` ranks the unannotated slices of a volume along
  an axis (:func:`fmseg.incontext.suggest.suggest_slices_iter`, the logic's support set and
  backend);
* **write** (main thread): :func:`show_slice` moves a slice view (``vtkMRMLSliceNode``) to
  the suggested slice.

:func:`write_suggestion` does that for the module's button and says why;
:func:`suggest_next_slice` reads, ranks and shows for scripts: it returns the indices (best
first) and the reasons.
"""

from __future__ import annotations

import numpy as np

from fmseg import coords
from fmseg.incontext import Suggestions
from fmseg.incontext.suggest import suggest_slices_iter
from fmseg.progress import Work, drain

from . import mrml


def suggest_iter(
    logic, volume, axis: int, backend: str = "auto", segment: str | None = None
) -> Work[Suggestions]:
    """Rank the unannotated slices of ``volume`` along ``axis`` (work step).

    Args:
        logic: The :class:`~FMSegLib.logic.FMSegLogic` holding the support set.
        volume: A :class:`~FMSegLib.logic.VolumeInput` read on the main thread.
        axis: Array axis of the ``(K, J, I)`` volume.
        backend: In-context backend whose result the annotations improve.
        segment: The structure (None: the support set's only one).

    Raises:
        ValueError: An empty support set, an unknown or ambiguous structure.
    """
    label = None if segment is None else logic._label(segment)
    window, source = logic._stats(volume)
    net = logic._network("backend", backend)
    return (
        yield from suggest_slices_iter(
            net, logic.support, volume.array, axis, window, label, source
        )
    )


def show_slice(volume_node, axis: int, index: int, slice_node) -> np.ndarray:
    """Move ``slice_node``'s plane through slice ``index`` (array ``axis``); returns its RAS.

    The plane's offset changes, not its orientation (for a view that shows that axis).
    """
    array = mrml.volume_array(volume_node)
    centre = (np.asarray(array.shape, float) - 1) / 2
    centre[axis] = index
    ras = coords.array_to_world(centre[None], mrml.ijk_to_world(volume_node))[0]
    slice_node.JumpSliceByOffsetting(*(float(v) for v in ras))
    return ras


#: The slice view of each orientation in Slicer's default layout.
VIEW_NODES = {
    "axial": "vtkMRMLSliceNodeRed",
    "coronal": "vtkMRMLSliceNodeGreen",
    "sagittal": "vtkMRMLSliceNodeYellow",
}


def write_suggestion(res: Suggestions, volume_node, view: str = "axial", slice_node=None) -> str:
    """Show the best slice in the view of ``view`` (or ``slice_node``); the status line.

    Main thread. A scene without that view (no GUI) moves nothing.
    """
    best = res.best
    if best is None:
        return f"Every slice along array axis {res.axis} is annotated."
    node = slice_node or volume_node.GetScene().GetNodeByID(VIEW_NODES.get(view, ""))
    if node is not None:
        show_slice(volume_node, res.axis, best.index, node)
    return f"Next slice to annotate: {best.index} (array axis {res.axis}): {best.reason}."


def suggest_next_slice(
    logic,
    volume_node,
    view: str = "axial",
    backend: str = "auto",
    segment: str | None = None,
    slice_node=None,
    top: int = 5,
) -> tuple[list[int], list[str]]:
    """Read, rank and (given a slice view) show the best slice; for scripts and a button.

    Args:
        logic: The :class:`~FMSegLib.logic.FMSegLogic`.
        volume_node: The volume being annotated (its annotated slices are in the support set).
        view: "axial", "coronal" or "sagittal": the axis ranked.
        backend: In-context backend.
        segment: The structure (None: the support set's only one).
        slice_node: A ``vtkMRMLSliceNode`` to move to the best slice (None: none moved).
        top: How many slices to return.

    Returns:
        The best ``top`` slice indices along the view's array axis and their reasons.
    """
    volume = logic.read_volume(volume_node)
    axis = logic.view_axis(volume_node, view)
    res = drain(suggest_iter(logic, volume, axis, backend, segment))
    best = res.ranked[:top]
    if slice_node is not None:
        write_suggestion(res, volume_node, view, slice_node)
    return [s.index for s in best], [s.reason for s in best]
