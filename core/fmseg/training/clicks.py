"""Click simulation and model-free click refinement, pure numpy/scipy.

Conventions: masks are ``(H, W)`` boolean arrays; clicks are :class:`~fmseg.prompts.Point` with
``x`` = column and ``y`` = row, in the pixels of the mask they were computed on.

Simulation (as in interactive-segmentation benchmarks):

* :func:`first_click`: positive, at the ground-truth pixel farthest from its boundary.
* :func:`error_click`: at the centre (distance-transform maximum) of the largest error region,
  positive on a false negative, negative on a false positive.

Refinement without a model (:func:`refine_with_click`): edit a binary mask (e.g. LiteMedSAM's
box prediction) with one click, using the model's probability map and the mask geometry.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..prompts import Point

_FOUR = ndimage.generate_binary_structure(2, 1)


def interior_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel of ``mask`` ``(H, W)`` to the nearest pixel outside it.

    Pixels beyond the image border count as outside, so regions touching the border still get
    their centre inside.
    """
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


def centre_pixel(mask: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the pixel of a non-empty ``(H, W)`` mask farthest from its boundary.

    Ties (e.g. along the ridge of an elongated shape) go to the tied pixel nearest their mean.
    """
    dist = interior_distance(mask)
    rows, cols = np.nonzero(dist >= dist.max() - 1e-6)
    i = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    return int(rows[i]), int(cols[i])


def first_click(gt: np.ndarray) -> Point:
    """Positive click at the centre of a non-empty ``(H, W)`` ground-truth mask."""
    if not np.any(gt):
        raise ValueError("empty ground truth: no click to simulate")
    r, c = centre_pixel(gt)
    return Point(float(c), float(r), True)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected component of a ``(H, W)`` mask (empty mask when none)."""
    lab, n = ndimage.label(mask, structure=_FOUR)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(lab.ravel())[1:]
    return lab == 1 + int(np.argmax(sizes))


def error_click(gt: np.ndarray, pred: np.ndarray) -> Point | None:
    """Corrective click for a ``(H, W)`` prediction, or None when it equals the ground truth.

    The click lies at the centre of the largest 4-connected error region: positive when the
    region is missed object (false negative), negative when it is false positive.
    """
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    fn, fp = largest_component(gt & ~pred), largest_component(pred & ~gt)
    if not fn.any() and not fp.any():
        return None
    region, positive = (fn, True) if fn.sum() >= fp.sum() else (fp, False)
    r, c = centre_pixel(region)
    return Point(float(c), float(r), positive)


def error_clicks(gt: np.ndarray, pred: np.ndarray, n: int) -> list[Point]:
    """Up to ``n`` corrective clicks from one ``(H, W)`` prediction, largest error region first.

    A cheap stand-in for ``n`` rounds of :func:`error_click` (used in training): one click at
    the centre of each of the ``n`` largest 4-connected error regions.
    """
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    regions = []
    for err, positive in ((gt & ~pred, True), (pred & ~gt, False)):
        lab, k = ndimage.label(err, structure=_FOUR)
        sizes = np.bincount(lab.ravel(), minlength=k + 1)
        regions += [(int(sizes[i]), i, positive, lab) for i in range(1, k + 1)]
    regions.sort(key=lambda t: -t[0])
    clicks = []
    for _, i, positive, lab in regions[:n]:
        r, c = centre_pixel(lab == i)
        clicks.append(Point(float(c), float(r), positive))
    return clicks


def random_interior_click(gt: np.ndarray, rng: np.random.Generator, min_frac: float = 0.3) -> Point:
    """Positive click at a random pixel whose boundary distance is ``>= min_frac`` of the max.

    A less idealised first click than :func:`first_click`, for training.
    """
    dist = interior_distance(gt)
    rows, cols = np.nonzero(dist >= max(min_frac * dist.max(), 1.0))
    i = int(rng.integers(rows.size))
    return Point(float(cols[i]), float(rows[i]), True)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two ``(H, W)`` boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def _component_at(mask: np.ndarray, r: int, c: int) -> np.ndarray:
    lab, _ = ndimage.label(mask, structure=_FOUR)
    return lab == lab[r, c] if lab[r, c] else np.zeros_like(mask, dtype=bool)


def _disk(shape: tuple[int, int], r: int, c: int, radius: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - r) ** 2 + (cols - c) ** 2 <= radius**2


def _add_region(
    prob: np.ndarray, mask: np.ndarray, r: int, c: int, low: float, max_growth: float
) -> np.ndarray:
    """Pixels to add for a positive click at ``(r, c)`` outside ``mask``."""
    radius = max(float(ndimage.distance_transform_edt(~mask)[r, c]) if mask.any() else 3.0, 1.5)
    disk = _disk(mask.shape, r, c, radius)
    grow = _component_at(prob > min(low, 0.5 * float(prob[r, c])), r, c)
    if grow.any() and grow.sum() <= max_growth * disk.sum():
        return grow | disk
    return disk


def _remove_region(mask: np.ndarray, r: int, c: int) -> np.ndarray:
    """Pixels to remove for a negative click at ``(r, c)`` inside ``mask``."""
    comp = _component_at(mask, r, c)
    if not largest_component(mask)[r, c]:
        return comp
    return _disk(mask.shape, r, c, max(float(interior_distance(mask)[r, c]), 1.5)) & comp


def refine_with_click(
    prob: np.ndarray, mask: np.ndarray, click: Point, low: float = 0.25, max_growth: float = 8.0
) -> np.ndarray:
    """Edit a binary mask with one click, without running a model.

    A positive click outside the mask adds the largest disk around the click that does not reach
    into the mask, together with the connected region of ``prob > min(low, p / 2)`` containing
    the click (``p``: probability at the click) unless that region is more than ``max_growth``
    times the disk's area (a leak). A negative click inside the mask removes its whole connected
    component when that is not the mask's largest one; otherwise the largest disk around the
    click that stays inside the mask. Clicks that agree with the mask change nothing.

    Args:
        prob: ``(H, W)`` foreground probability of the base prediction (e.g. box-only).
        mask: ``(H, W)`` current binary mask (e.g. ``prob > 0.5`` after earlier clicks).
        click: The click, in the same pixel frame.
        low: Probability above which pixels connected to a positive click are added.
        max_growth: Largest accepted ratio of the grown region's area to the disk's.

    Returns:
        The new ``(H, W)`` boolean mask.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    r = int(np.clip(round(click.y), 0, h - 1))
    c = int(np.clip(round(click.x), 0, w - 1))
    if click.positive and not mask[r, c]:
        return mask | _add_region(prob, mask, r, c, low, max_growth)
    if not click.positive and mask[r, c]:
        return mask & ~_remove_region(mask, r, c)
    return mask.copy()
