"""Markups -> the core's slice prompts: world RAS -> array index (:mod:`fmseg.coords`) -> slice.

The pure part (:func:`slice_prompts`) takes world points and a volume's ``ijk`` -> world matrix,
so it is tested without MRML; :func:`prompts_from_markups` reads the nodes first. A Markups
curve is a scribble (clicks along it, :func:`fmseg.interactive.scribbles.scribble_points`), a
closed curve a lasso (its control points are the polygon), both on the slice they were drawn on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fmseg import Box, Point, Prompts, coords
from fmseg.interactive.scribbles import scribble_points

from . import mrml

#: Control point descriptions that make a point of the positive list a background click.
NEGATIVE_WORDS = ("negative", "neg", "-", "background")


@dataclass(frozen=True)
class SlicePrompts:
    """Prompts on one slice ``np.take(volume, index, axis)`` of the ``(K, J, I)`` array.

    Attributes:
        axis: Slicing axis of the array.
        index: Slice index along ``axis``.
        prompts: The core's prompts (``x`` = column, ``y`` = row).
        ignored: Points left out because they lie on other slices.
    """

    axis: int
    index: int
    prompts: Prompts
    ignored: int = 0


def _target_slice(index_pos: np.ndarray, index_neg: np.ndarray, roi: np.ndarray | None) -> int:
    """The ROI's centre slice, else the slice of the last positive, else last negative point."""
    if roi is not None:
        return int(np.rint(roi.mean()))
    for index in (index_pos, index_neg):
        if len(index):
            return int(index[-1])
    raise ValueError("place at least one point, curve or an ROI")


def _curves(curves, ijk_to_world: np.ndarray, axis: int) -> list[tuple[int, np.ndarray, bool]]:
    """``(slice, (V, 2) xy, positive)`` of world curves: each on its most common slice."""
    out = []
    for world, positive in curves:
        if len(world) == 0:
            continue
        index, xy = coords.slice_position(coords.world_to_array(world, ijk_to_world), axis)
        values, counts = np.unique(index, return_counts=True)
        out.append((int(values[np.argmax(counts)]), xy, bool(positive)))
    return out


def slice_prompts(
    ijk_to_world: np.ndarray,
    shape: tuple[int, int, int],
    axis: int,
    positive: np.ndarray,
    negative: np.ndarray,
    roi_corners: np.ndarray | None = None,
    scribbles=(),
    lasso: np.ndarray | None = None,
) -> SlicePrompts:
    """Prompts on one slice from world points, curves and an ROI.

    The slice is the ROI's centre slice, else that of the last positive (then negative) point,
    else the lasso's, else the last scribble's; points and curves on other slices are counted
    in :attr:`SlicePrompts.ignored`. The box is the bounding rectangle of the ROI's corners
    projected onto the slice, clipped to the image. Scribble clicks follow the points.

    Args:
        ijk_to_world: The volume's voxel -> world matrix.
        shape: ``(K, J, I)`` array shape.
        axis: Array axis to slice along.
        positive: ``(N, 3)`` world points on the object.
        negative: ``(M, 3)`` world points on the background.
        roi_corners: ``(8, 3)`` world corners of a box, or None.
        scribbles: ``((V, 3) world points, positive)`` of open curves.
        lasso: ``(V, 3)`` world points of a closed curve, or None.

    Raises:
        ValueError: No prompt at all, the slice is outside the volume, or the ROI misses it.
    """
    pos = coords.world_to_array(np.reshape(positive, (-1, 3)), ijk_to_world)
    neg = coords.world_to_array(np.reshape(negative, (-1, 3)), ijk_to_world)
    pts = np.concatenate([pos, neg])
    flags = [True] * len(pos) + [False] * len(neg)
    index_pts, xy = coords.slice_position(pts, axis)
    corners = None
    if roi_corners is not None:
        corners = coords.world_to_array(np.asarray(roi_corners, dtype=float), ijk_to_world)
    roi_axis = None if corners is None else corners[:, axis]
    curves = _curves(scribbles, ijk_to_world, axis)
    lassos = _curves(
        [] if lasso is None else [(np.reshape(lasso, (-1, 3)), True)], ijk_to_world, axis
    )
    try:
        index = _target_slice(index_pts[: len(pos)], index_pts[len(pos) :], roi_axis)
    except ValueError:
        if not lassos and not curves:
            raise
        index = (lassos or curves)[-1][0]
    if not 0 <= index < shape[axis]:
        raise ValueError(f"the prompts are on slice {index}, outside 0..{shape[axis] - 1}")
    on = index_pts == index
    kept = zip(xy, flags, on, strict=True)
    points = tuple(Point(float(x), float(y), f) for (x, y), f, o in kept if o)
    for i, path, positive in curves:
        points += scribble_points(path, positive) if i == index else ()
    box = None if corners is None else _box(corners, axis, shape)
    polygon = next((tuple(map(tuple, v)) for i, v, _ in lassos if i == index), None)
    off = int((~on).sum()) + sum(i != index for i, _, _ in curves + lassos)
    return SlicePrompts(axis, index, Prompts(points, box, polygon), off)


def _box(corners: np.ndarray, axis: int, shape: tuple[int, int, int]) -> Box:
    """The clipped rectangle around array-index corners projected on slices along ``axis``."""
    _, xy = coords.slice_position(corners, axis)
    rows, cols = (n for a, n in enumerate(shape) if a != axis)
    x0, y0 = np.maximum(xy.min(0), 0)
    x1, y1 = np.minimum(xy.max(0), (cols - 1, rows - 1))
    if x1 <= x0 or y1 <= y0:
        raise ValueError("the ROI does not overlap the volume on this slice")
    return Box(float(x0), float(y0), float(x1), float(y1))


def prompts_from_markups(
    volume_node,
    axis: int,
    positive_node=None,
    negative_node=None,
    roi_node=None,
    scribble_nodes=(),
    lasso_node=None,
) -> SlicePrompts:
    """Read Markups nodes (main thread) and convert them with :func:`slice_prompts`.

    Args:
        volume_node: The scalar volume being segmented.
        axis: Array axis to slice along (see :func:`fmseg.coords.slice_axis`).
        positive_node: Point list on the object; points whose description is one of
            :data:`NEGATIVE_WORDS` count as background.
        negative_node: Point list on the background.
        roi_node: A Markups ROI giving the box.
        scribble_nodes: Markups curves drawn on the object; one whose description is one of
            :data:`NEGATIVE_WORDS` is drawn on the background.
        lasso_node: A Markups closed curve drawn around the object.
    """
    points, descriptions = mrml.control_points(positive_node)
    is_neg = np.array([d.strip().lower() in NEGATIVE_WORDS for d in descriptions], dtype=bool)
    negative = np.concatenate([mrml.control_points(negative_node)[0], points[is_neg]])
    corners = None if roi_node is None else mrml.roi_corners(roi_node)
    shape = tuple(reversed(volume_node.GetImageData().GetDimensions()))
    scribbles = [
        (
            mrml.control_points(n)[0],
            (n.GetDescription() or "").strip().lower() not in NEGATIVE_WORDS,
        )
        for n in scribble_nodes
        if n is not None
    ]
    lasso = None if lasso_node is None else mrml.control_points(lasso_node)[0]
    return slice_prompts(
        mrml.ijk_to_world(volume_node), shape, axis, points[~is_neg], negative, corners,
        scribbles, lasso,
    )  # fmt: skip
