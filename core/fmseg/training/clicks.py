"""Click simulation and model-free click refinement, pure numpy/scipy.

Conventions: masks are ``(H, W)`` boolean arrays; clicks are
:class:`~fmseg.interactive.prompts.Point` with ``x`` = column and ``y`` = row, in the
pixels of the mask they were computed on.

Simulation (as in interactive-segmentation benchmarks):

* :func:`first_click`: positive, at the ground-truth pixel farthest from its boundary.
* :func:`error_click`: at the centre (distance-transform maximum) of the largest error region,
  positive on a false negative, negative on a false positive.

The model-free refinement used by the session lives in :mod:`fmseg.interactive.refine`
(re-exported here).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..interactive.prompts import Point
from ..interactive.refine import _FOUR, interior_distance, largest_component, refine_with_click
from ..metrics import dice

__all__ = [
    "centre_pixel",
    "dice",
    "error_click",
    "error_clicks",
    "first_click",
    "interior_distance",
    "largest_component",
    "random_interior_click",
    "refine_with_click",
]


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
