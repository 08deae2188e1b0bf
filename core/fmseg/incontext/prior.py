"""The extra query inputs of the prior-conditioned in-context network (one definition).

Besides its image, a query slice gets five channels, all at the network's input size:

* ``prior``: the current best guess of the mask in [0, 1]. From annotated slices of the same
  volume it is the signed-distance interpolation of the two neighbouring annotations (beyond
  the annotated range: the nearest one), as a ramp ``clip(0.5 + sdf / (2 * RAMP), 0, 1)`` so
  0.5 is the interpolated contour and the distance to it is kept up to ``RAMP`` pixels; after
  a click it is the previous prediction; without either it is 0.
* ``closeness``: a constant ``1 / (1 + d)``, ``d`` the distance in slices to the nearest
  annotated slice the prior came from (0: no prior; 1: the prior is the slice's previous
  prediction), so the network can tell an interpolation between close annotations from an
  extrapolation far from them.
* ``positive``, ``negative``: clicks (and scribbles) as discs of radius ``CLICK_RADIUS``.
* ``box``: a filled bounding box, or 0.

Training (:mod:`fmseg.training.prior_episodes`) and inference
(:class:`~fmseg.incontext.prior_backend.PriorBackend`) both build these maps here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..models.prior_universeg import CHANNELS, RAMP

__all__ = ["CHANNELS", "RAMP"]  # re-exported: the channel layout lives with the network

CLICK_RADIUS = 2.0  # pixels at the network's input size
PREDICTION_CLOSENESS = 1.0  # closeness of a prior that is this slice's previous prediction


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Positive inside, negative outside, in pixels (empty masks: -1e3 everywhere)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.full(mask.shape, -1e3, dtype=np.float32)
    inside = ndi.distance_transform_edt(mask)
    outside = ndi.distance_transform_edt(~mask)
    return (inside - outside).astype(np.float32)


@dataclass(frozen=True)
class Interpolated:
    """The interpolated signed distance at one slice and how far its sources are.

    Attributes:
        sdf: ``(H, W)`` signed distance in pixels.
        distance: Slices to the nearest annotated slice used.
        bracketed: True when annotations lie on both sides of the slice.
    """

    sdf: np.ndarray
    distance: int
    bracketed: bool


def interpolate(index: int, annotated: Sequence[tuple[int, np.ndarray]]) -> Interpolated:
    """Signed-distance interpolation at slice ``index`` from ``(slice index, sdf)`` pairs.

    Between two annotated slices the signed distances are mixed linearly by slice distance;
    beyond the annotated range the nearest end's is returned. An annotation on ``index``
    itself is returned as is.

    Raises:
        ValueError: No annotated slice.
    """
    if not annotated:
        raise ValueError("no annotated slice to interpolate from")
    pairs = sorted(annotated, key=lambda t: t[0])
    idx = np.array([p[0] for p in pairs])
    j = int(np.searchsorted(idx, index))
    if j < len(idx) and idx[j] == index:
        return Interpolated(pairs[j][1], 0, True)
    if j == 0 or j == len(idx):
        k = min(j, len(idx) - 1)
        return Interpolated(pairs[k][1], int(abs(idx[k] - index)), False)
    (i0, s0), (i1, s1) = pairs[j - 1], pairs[j]
    w = (index - i0) / (i1 - i0)
    dist = int(min(index - i0, i1 - index))
    return Interpolated(((1 - w) * s0 + w * s1).astype(np.float32), dist, True)


def interpolate_masks(index: int, indices: Sequence[int], masks: Sequence[np.ndarray]):
    """:func:`interpolate` from boolean ``masks`` annotated at slice ``indices``."""
    pairs = [(int(i), signed_distance(m)) for i, m in zip(indices, masks, strict=True)]
    return interpolate(index, pairs)


def prior_from_sdf(sdf: np.ndarray) -> np.ndarray:
    """The ``prior`` channel of a signed distance map: a ramp of half-width ``RAMP``."""
    return np.clip(0.5 + np.asarray(sdf, np.float32) / (2 * RAMP), 0.0, 1.0)


def closeness(distance: int | None) -> float:
    """The ``closeness`` channel's value for a prior ``distance`` slices away (None: no prior).

    ``1 / (1 + d)`` for ``d >= 1``; an annotated slice itself (``d = 0``) counts as one slice
    away, so an interpolated prior is always below :data:`PREDICTION_CLOSENESS` (1).
    """
    return 0.0 if distance is None else 1.0 / (1.0 + max(float(distance), 1.0))


def click_map(points: Sequence[tuple[float, float]], shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` float32 with a disc of radius ``CLICK_RADIUS`` at each ``(row, col)``."""
    out = np.zeros(shape, np.float32)
    if len(points) == 0:
        return out
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for r, c in points:
        out[(yy - r) ** 2 + (xx - c) ** 2 <= CLICK_RADIUS**2] = 1.0
    return out


def box_map(box: Sequence[float] | None, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` float32, 1 inside ``(row0, col0, row1, col1)`` (inclusive), else 0."""
    out = np.zeros(shape, np.float32)
    if box is not None:
        r0, c0, r1, c1 = (int(round(v)) for v in box)
        out[max(r0, 0) : r1 + 1, max(c0, 0) : c1 + 1] = 1.0
    return out


@dataclass(frozen=True)
class Clicks:
    """Corrective interactions on one query slice, in the slice's own pixel coordinates.

    Attributes:
        positive: ``(row, col)`` points (or scribble pixels) inside the structure.
        negative: ``(row, col)`` points outside it.
        box: ``(row0, col0, row1, col1)`` or None.
    """

    positive: tuple[tuple[float, float], ...] = ()
    negative: tuple[tuple[float, float], ...] = ()
    box: tuple[float, float, float, float] | None = None

    def scaled(self, factor_r: float, factor_c: float) -> Clicks:
        """The same interactions in a resized slice's coordinates."""

        def pts(p):
            return tuple((r * factor_r, c * factor_c) for r, c in p)

        box = None
        if self.box is not None:
            r0, c0, r1, c1 = self.box
            box = (r0 * factor_r, c0 * factor_c, r1 * factor_r, c1 * factor_c)
        return Clicks(pts(self.positive), pts(self.negative), box)

    def __bool__(self) -> bool:
        return bool(self.positive or self.negative or self.box is not None)


def query_channels(
    image: np.ndarray,
    prior: np.ndarray | None = None,
    near: float = 0.0,
    clicks: Clicks | None = None,
) -> np.ndarray:
    """The ``(6, H, W)`` float32 network input of one query (see :data:`CHANNELS`).

    Args:
        image: ``(H, W)`` in [0, 1] at the network's input size.
        prior: ``(H, W)`` prior in [0, 1] (None: no prior).
        near: The ``closeness`` value (:func:`closeness`).
        clicks: Interactions in the same pixel coordinates (None: none).
    """
    shape = image.shape
    clicks = clicks or Clicks()
    zero = np.zeros(shape, np.float32)
    return np.stack(
        [
            np.asarray(image, np.float32),
            zero if prior is None else np.asarray(prior, np.float32),
            np.full(shape, near if prior is not None else 0.0, np.float32),
            click_map(clicks.positive, shape),
            click_map(clicks.negative, shape),
            box_map(clicks.box, shape),
        ]
    )


def corrective_click(pred: np.ndarray, truth: np.ndarray) -> tuple[tuple[int, int], bool] | None:
    """Where a careful user clicks next: the innermost pixel of the largest error region.

    Args:
        pred: ``(H, W)`` boolean prediction.
        truth: ``(H, W)`` boolean reference.

    Returns:
        ``((row, col), positive)`` (positive: a missed pixel), or None when there is no error.
    """
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    err = pred ^ truth
    if not err.any():
        return None
    lab, n = ndi.label(err)
    sizes = np.bincount(lab.ravel())[1:]
    region = lab == (int(np.argmax(sizes)) + 1)
    dist = ndi.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return (int(r), int(c)), bool(truth[r, c])
