"""Pure conversions between napari layer data and fmseg prompts and masks (no Qt, no viewer).

napari layers made from an image hold ``(z, y, x)`` data coordinates (``(y, x)`` for a 2D
image, which fmseg sees as a volume of one slice). fmseg slices along axis 0 are the
``(y, x)`` planes, and their prompts use ``x`` = column, ``y`` = row. So a napari point
``(z, y, x)`` becomes ``Point(x, y)`` on slice ``round(z)``, and a shape drawn on slice ``z``
becomes the :class:`~fmseg.interactive.prompts.Box` around its vertices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fmseg import Window, get_spec
from fmseg.interactive.prompts import Box, Point, Prompts
from fmseg.interactive.scribbles import scribble_points

#: Names of the layers the Segment tool manages.
PROMPTS_LAYER = "fmseg prompts"
BOX_LAYER = "fmseg box"
SCRIBBLE_LAYER = "fmseg scribbles"
OBJECT_LAYER = "fmseg object"
LABELS_LAYER = "fmseg labels"
#: Output layers of the In-context, Uncertainty and Adapt tools.
INCONTEXT_LAYER = "in-context"
UNCERTAINTY_LAYER = "uncertainty result"
ADAPTER_LAYER = "fmseg adapter"
#: Image layers of the Uncertainty tool: the candidates, their mean and the two maps (named by
#: their titles in :data:`fmseg.uncertainty.MAPS`).
SAMPLES, MEAN, DISAGREEMENT, TOTAL = "samples", "mean", "disagreement", "total uncertainty"
UNCERTAINTY_IMAGES = (SAMPLES, MEAN, DISAGREEMENT, TOTAL)
#: Labels layers fmseg makes: chosen as annotations only when no layer the user opened holds
#: labels (the first three are never offered as annotations: they hold a tool's output).
OUTPUTS = (OBJECT_LAYER, INCONTEXT_LAYER, UNCERTAINTY_LAYER)
FMSEG_LABELS = (*OUTPUTS, LABELS_LAYER, ADAPTER_LAYER)
#: Slicing-axis choices ``(text, axis)`` of the layer data ``(z, y, x)``.
AXES = (("0 (z)", 0), ("1 (y)", 1), ("2 (x)", 2))
#: Feature of the prompts layer that marks clicks on the object (True) or background (False).
POSITIVE = "positive"
#: Colours of positive and negative clicks, and of the working object.
CLICK_COLOURS = {True: "lime", False: "red"}
OBJECT_COLOUR = "yellow"


def as_zyx(coords: np.ndarray) -> np.ndarray:
    """Coordinates as ``(N, 3)`` ``(z, y, x)``: 2D ``(y, x)`` rows get ``z = 0``.

    Args:
        coords: ``(N, 2)`` or ``(N, 3)`` data coordinates (more leading axes are dropped).
    """
    arr = np.atleast_2d(np.asarray(coords, dtype=float))
    if arr.size == 0:
        return np.zeros((0, 3))
    if arr.shape[1] == 2:
        return np.column_stack([np.zeros(len(arr)), arr])
    return arr[:, -3:]


def slice_indices(coords: np.ndarray) -> np.ndarray:
    """Slice index (rounded ``z``) of each ``(z, y, x)`` or ``(y, x)`` row."""
    return np.rint(as_zyx(coords)[:, 0]).astype(int)


def points_on_slice(
    data: np.ndarray, positive: Sequence[bool] | np.ndarray | None, index: int
) -> tuple[Point, ...]:
    """Clicks of a Points layer that lie on slice ``index``, in the order they were placed.

    Args:
        data: ``(N, 3)`` points ``(z, y, x)`` (or ``(N, 2)`` for a 2D image).
        positive: ``(N,)`` flags, False for background clicks; None means all positive.
        index: Slice along axis 0.
    """
    zyx = as_zyx(data)
    flags = np.ones(len(zyx), bool) if positive is None else np.asarray(positive, bool)
    on = np.flatnonzero(slice_indices(zyx) == index)
    return tuple(Point(float(zyx[i, 2]), float(zyx[i, 1]), bool(flags[i])) for i in on)


def box_on_slice(
    shapes: Sequence[np.ndarray], index: int, shape: tuple[int, int] | None = None
) -> Box | None:
    """The box of the last shape drawn on slice ``index`` (its vertices' bounding box).

    Args:
        shapes: Vertex arrays of a Shapes layer, each ``(V, 3)`` ``(z, y, x)`` or ``(V, 2)``.
        index: Slice along axis 0.
        shape: ``(H, W)`` of the slice; when given the box is clipped to the image.

    Returns:
        The box, or None when no shape lies on the slice.
    """
    for vertices in reversed(list(shapes)):
        zyx = as_zyx(vertices)
        if len(zyx) and np.all(slice_indices(zyx) == index):
            (y0, x0), (y1, x1) = zyx[:, 1:].min(axis=0), zyx[:, 1:].max(axis=0)
            box = Box(float(x0), float(y0), float(x1), float(y1))
            return box if shape is None else clip_box(box, shape)
    return None


def superseded_shapes(shapes: Sequence[np.ndarray]) -> list[int]:
    """Indices of shapes followed by a later shape on the same slice (a new box replaces them)."""
    seen: set[int] = set()
    stale = []
    for k in range(len(shapes) - 1, -1, -1):
        z = set(slice_indices(shapes[k]).tolist())
        if z & seen:
            stale.append(k)
        seen |= z
    return sorted(stale)


def clip_box(box: Box, shape: tuple[int, int]) -> Box:
    """The part of ``box`` inside an ``(H, W)`` image (drawing past the border is harmless)."""
    h, w = shape
    b = box.normalised()
    return Box(
        float(np.clip(b.x0, 0, w - 1)),
        float(np.clip(b.y0, 0, h - 1)),
        float(np.clip(b.x1, 0, w - 1)),
        float(np.clip(b.y1, 0, h - 1)),
    )


def scribbles_on_slice(
    shapes: Sequence[np.ndarray],
    kinds: Sequence[str],
    positive: Sequence[bool] | np.ndarray | None,
    index: int,
) -> tuple[tuple[Point, ...], tuple | None]:
    """Clicks of the scribbles (paths) and the last lasso (polygon) drawn on slice ``index``.

    Args:
        shapes: Vertex arrays of the scribbles Shapes layer, ``(V, 3)`` ``(z, y, x)`` or
            ``(V, 2)``.
        kinds: Their shape types (``"path"`` scribbles, ``"polygon"`` lassos; others ignored).
        positive: Their ``positive`` feature (None: all positive).
        index: Slice along axis 0.

    Returns:
        ``(clicks along the scribbles in drawing order, lasso (x, y) vertices or None)``.
    """
    flags = np.ones(len(shapes), bool) if positive is None else np.asarray(positive, bool)
    points: tuple[Point, ...] = ()
    lasso = None
    for vertices, kind, sign in zip(shapes, kinds, flags, strict=True):
        zyx = as_zyx(vertices)
        if not len(zyx) or not np.all(slice_indices(zyx) == index):
            continue
        if kind in ("path", "line", "polyline"):
            points += scribble_points(zyx[:, [2, 1]], bool(sign))
        elif kind == "polygon" and len(zyx) >= 3:
            lasso = tuple((float(x), float(y)) for x, y in zyx[:, [2, 1]])
    return points, lasso


def prompts_by_slice(
    points: np.ndarray,
    positive: Sequence[bool] | np.ndarray | None,
    shapes: Sequence[np.ndarray],
    shape: tuple[int, int] | None = None,
    scribbles: tuple[Sequence[np.ndarray], Sequence[str], Any] | None = None,
) -> dict[int, Prompts]:
    """All prompts of the prompt layers, grouped by slice (slices without any are absent).

    Args:
        points: Points layer data.
        positive: Points layer ``positive`` feature (None: all positive).
        shapes: Shapes layer data.
        shape: ``(H, W)`` of a slice, to clip boxes.
        scribbles: ``(data, shape types, positive feature)`` of the scribbles layer, or None.
            A scribble's clicks follow the slice's clicks.
    """
    indices = set(slice_indices(points).tolist()) if len(points) else set()
    for vertices in list(shapes) + list(scribbles[0] if scribbles else []):
        indices.update(slice_indices(vertices).tolist())
    out = {}
    for i in sorted(indices):
        prompts = Prompts(points_on_slice(points, positive, i), box_on_slice(shapes, i, shape))
        if scribbles is not None:
            more, lasso = scribbles_on_slice(*scribbles, i)
            prompts = prompts.with_points(more).with_lasso(lasso)
        if not prompts.empty:
            out[i] = prompts
    return out


def layers_from_prompts(prompts: Mapping[tuple[int, int], Prompts], ndim: int) -> dict:
    """Layer data showing a session's axis-0 prompts (after an undo or redo).

    Scribbles come back as the clicks they became; lassos as polygons.

    Returns:
        ``{"points": (N, ndim), "positive": (N,), "boxes": [(4, ndim)], "lassos": [(V, ndim)]}``.
    """
    pts, flags, boxes, lassos = [], [], [], []

    def row(z: int, y: float, x: float) -> list[float]:
        return [float(z), y, x][-ndim:]

    for (axis, z), p in sorted(prompts.items()):
        if axis != 0:
            continue
        pts += [row(z, q.y, q.x) for q in p.points]
        flags += [q.positive for q in p.points]
        if p.box is not None:
            b = p.box.normalised()
            corners = ((b.y0, b.x0), (b.y0, b.x1), (b.y1, b.x1), (b.y1, b.x0))
            boxes.append(np.array([row(z, y, x) for y, x in corners]))
        if p.lasso is not None:
            lassos.append(np.array([row(z, y, x) for x, y in p.lasso]))
    points = np.array(pts, dtype=float).reshape(-1, ndim)
    return {"points": points, "positive": np.array(flags, bool), "boxes": boxes, "lassos": lassos}


def changed_slices(
    wanted: Mapping[int, Prompts], current: Mapping[tuple[int, int], Prompts], axis: int = 0
) -> list[int]:
    """Slices whose prompts differ between the layers (``wanted``) and a session's ``prompts``.

    Args:
        wanted: Output of :func:`prompts_by_slice`.
        current: ``Session.prompts``, keyed ``(axis, index)``.
        axis: The axis the layers slice along.

    Returns:
        Sorted slice indices to re-segment (or to clear, when absent from ``wanted``).
    """
    have = {i: p for (a, i), p in current.items() if a == axis and not p.empty}
    return sorted(i for i in set(wanted) | set(have) if wanted.get(i) != have.get(i))


def write_slice(data: np.ndarray, index: int, mask: np.ndarray, value: int = 1) -> None:
    """Write a ``(H, W)`` mask into slice ``index`` of a labels array, in place.

    The slice becomes ``value`` where ``mask`` is set and 0 elsewhere. For 2D data, ``index``
    must be 0 and the whole array is written.
    """
    target = data if data.ndim == 2 else data[index]
    if data.ndim == 2 and index != 0:
        raise IndexError(f"a 2D labels layer has only slice 0, got {index}")
    target[...] = np.where(mask, value, 0).astype(data.dtype, copy=False)


def layer_view(volume: np.ndarray, ndim: int) -> np.ndarray:
    """A session array ``(D, H, W)`` as layer data: the array itself, or slice 0 for 2D images."""
    return volume[0] if ndim == 2 else volume


def embedding_order(n: int, start: int) -> list[int]:
    """Slice order for background embedding: ``start`` first, then outwards alternately.

    Propagation walks out from the prompted slice, so it finds its neighbours ready.
    """
    start = min(max(int(start), 0), n - 1) if n else 0
    order = [start] if n else []
    for d in range(1, n):
        order += [i for i in (start + d, start - d) if 0 <= i < n]
    return order


def point_model_for(model: str) -> str | None:
    """The click model sharing ``model``'s image encoder, or None (the box model takes clicks)."""
    return get_spec(model).click_model


def contrast_window(image: Any) -> Window:
    """The intensity window of an image layer: its contrast limits, i.e. what the user sees.

    Every tool (Segment, In-context, Uncertainty) runs its model with this fixed window.
    """
    low, high = (float(v) for v in image.contrast_limits)
    return Window.fixed(low, high)


def geometry(layer: Any) -> dict[str, Any]:
    """Keyword arguments (scale, translate, rotate, shear, affine) placing a layer on ``layer``."""
    return {
        "scale": tuple(float(s) for s in layer.scale),
        "translate": tuple(float(t) for t in layer.translate),
        "rotate": np.asarray(layer.rotate, dtype=float).copy(),
        "shear": np.asarray(layer.shear, dtype=float).copy(),
        "affine": np.asarray(layer.affine.affine_matrix, dtype=float).copy(),
    }


def labels_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an image's metadata for its labels (the writer saves with its ``affine``)."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in metadata.items()}


def prompts_layer_kwargs(image: Any) -> dict[str, Any]:
    """Keyword arguments for the clicks Points layer on ``image`` (green +, red -)."""
    size = max(3.0, min(image.data.shape[-2:]) / 40)
    return {
        **geometry(image),
        "name": PROMPTS_LAYER,
        "ndim": image.ndim,
        "features": {POSITIVE: np.zeros(0, bool)},
        "face_color": POSITIVE,
        "face_color_cycle": dict(CLICK_COLOURS),
        "border_color": "white",
        "size": size,
    }


def box_layer_kwargs(image: Any) -> dict[str, Any]:
    """Keyword arguments for the box Shapes layer on ``image``."""
    return {
        **geometry(image),
        "name": BOX_LAYER,
        "ndim": image.ndim,
        "edge_color": "cyan",
        "face_color": "transparent",
        "edge_width": max(1.0, min(image.data.shape[-2:]) / 256),
    }


def scribble_layer_kwargs(image: Any) -> dict[str, Any]:
    """Keyword arguments for the scribbles and lassos Shapes layer (green +, red -)."""
    return {
        **geometry(image),
        "name": SCRIBBLE_LAYER,
        "ndim": image.ndim,
        "features": {POSITIVE: np.zeros(0, bool)},
        "edge_color": CLICK_COLOURS[True],  # the widget sets the colour of the next one
        "face_color": "transparent",
        "edge_width": max(1.0, min(image.data.shape[-2:]) / 128),
    }


def object_layer_kwargs(image: Any) -> dict[str, Any]:
    """Keyword arguments for the working-object Labels layer (one colour, half transparent)."""
    return {
        **geometry(image),
        "name": OBJECT_LAYER,
        "colormap": {None: "transparent", 1: OBJECT_COLOUR},
        "opacity": 0.5,
    }


def slice_at(layer: Any, world_point: Sequence[float], axis: int) -> int:
    """Index along ``axis`` of ``layer``'s data at the viewer's ``world_point`` (clipped).

    A layer of fewer than three dimensions has only slice 0.
    """
    if layer is None or layer.ndim < 3 or getattr(layer, "rgb", False):
        return 0
    pos = layer.world_to_data(world_point)[axis]
    return int(np.clip(round(float(pos)), 0, layer.data.shape[axis] - 1))


def choices(layers: Sequence[Any], kind: type, exclude: Sequence[str] = ()) -> list[tuple]:
    """``(name, layer)`` of the layers of ``kind``, except those named in ``exclude``."""
    return [(x.name, x) for x in layers if isinstance(x, kind) and x.name not in exclude]


def holds_labels(layer: Any) -> bool:
    """True when a Labels layer has any non-zero voxel (stops at the first plane with one)."""
    data = layer.data
    planes = (data[i] for i in range(len(data))) if getattr(data, "ndim", 0) > 2 else [data]
    return any(np.any(np.asarray(plane)) for plane in planes)


def is_users_annotations(layer: Any) -> bool:
    """True for a Labels layer the user opened (not made by fmseg) that holds labels."""
    return layer.name not in FMSEG_LABELS and holds_labels(layer)


def preferred_annotations(candidates: Sequence[Any]) -> Any:
    """The annotations layer to choose by default among ``candidates`` (None if empty).

    The first one the user opened (not made by fmseg) that holds labels; else the first of
    fmseg's own that does (committed Segment labels); else the first the user opened; else
    the first. An empty "fmseg labels" layer is never preferred to the user's annotations.
    """
    if found := next((x for x in candidates if is_users_annotations(x)), None):
        return found
    if found := next((x for x in candidates if holds_labels(x)), None):
        return found
    mine = [x for x in candidates if x.name not in FMSEG_LABELS]
    return next(iter(mine or candidates), None)
