"""Corrective clicks on an in-context result, and keeping the corrected slice as a support.

The workflow a front end offers (napari, Slicer, Python):

1. :func:`correct_slice`: the clicks (and the slice's current probabilities) go to the
   prior-conditioned network as interaction channels; it returns the corrected slice.
2. :func:`add_corrected_slice`: one action adds the corrected slice to the support set and
   returns the slices whose result changes (:func:`affected_slices`: those whose nearest
   annotations changed), which the front end re-segments with
   :func:`~fmseg.incontext.segment.segment_volume_iter` (``slices=...``).
"""

from __future__ import annotations

import numpy as np

from ..validation import check_slices
from ..window import WindowLike, intensity_window
from .backends import Backend
from .prior import Clicks
from .prior_backend import REACH
from .segment import binary_supports, volume_queries, volume_source
from .support import SupportSet

#: Backends whose network takes corrective clicks (the prior-conditioned one).
CLICK_BACKENDS = ("auto", "incontext-prior")


def takes_clicks(backend: Backend | str) -> bool:
    """Whether ``backend`` (or the backend of that name) accepts corrective clicks."""
    return (backend if isinstance(backend, str) else backend.name) in CLICK_BACKENDS


def pick_label(support: SupportSet, label: int | None) -> int:
    """The label value being corrected (the only one when the support set has one)."""
    values = support.label_values
    if label is None:
        if len(values) != 1:
            raise ValueError(f"the support set has labels {values}: say which one to correct")
        return values[0]
    if label not in values:
        raise ValueError(f"label {label} is not in the support set (labels: {values})")
    return label


def correct_slice(
    backend: Backend,
    support: SupportSet,
    volume: np.ndarray,
    axis: int,
    index: int,
    clicks: Clicks,
    previous: np.ndarray | None = None,
    window: WindowLike = None,
    label: int | None = None,
    source: str | None = None,
) -> np.ndarray:
    """Re-segment one slice with the user's corrective clicks.

    Args:
        backend: ``auto`` or ``incontext-prior`` (:func:`takes_clicks`).
        support: The support set the result came from.
        volume: ``(D, H, W)`` raw intensities.
        axis: Slicing axis.
        index: Slice index along ``axis``.
        clicks: Every click on this slice so far, in the slice's pixel coordinates
            ``(row, col)`` of ``np.take(volume, index, axis)``.
        previous: ``(H, W)`` current probabilities of the slice (None: start from the
            interpolated prior / the support set alone).
        window: Intensity window (the one the result was made with).
        label: Label value corrected (None: the support set's only one).
        source: Identity of ``volume`` (:func:`~fmseg.incontext.segment.volume_source`).

    Returns:
        ``(H, W)`` float32 probabilities of the corrected slice.

    Raises:
        ValueError: A backend without clicks, no clicks, or a bad label / slice.
    """
    if not takes_clicks(backend):
        raise ValueError(f"backend '{backend.name}' does not take clicks: use auto")
    if not clicks:
        raise ValueError("no click to correct with: add a positive or negative point")
    label = pick_label(support, label)
    _, idx, queries, pos = volume_queries(volume, axis, window, [index], source)
    state = backend.prepare(binary_supports(support, label))
    prev = None if previous is None else np.asarray(previous, np.float32)[None]
    return backend.predict(state, queries, pos, clicks=[clicks], previous=prev)[0]


def affected_slices(
    support: SupportSet, source: str, axis: int, index: int, depth: int, reach: int = REACH
) -> list[int]:
    """Slices whose nearest annotations change when slice ``index`` is annotated.

    Those strictly between ``index`` and the nearest annotated slices of the same volume and
    axis on each side, or up to ``reach`` slices away on a side without one.
    """
    taken = sorted(
        e.index for e in support.examples if e.source == source and e.axis == axis and e.index >= 0
    )
    below = [i for i in taken if i < index]
    above = [i for i in taken if i > index]
    lo = below[-1] + 1 if below else max(0, index - reach)
    hi = above[0] - 1 if above else min(depth - 1, index + reach)
    return [i for i in range(lo, hi + 1) if i != index]


def add_corrected_slice(
    support: SupportSet,
    volume: np.ndarray,
    mask: np.ndarray,
    axis: int,
    index: int,
    label: int,
    window: WindowLike = None,
    source: str | None = None,
) -> list[int]:
    """Add a corrected slice to the support set; returns the slices to re-segment.

    Args:
        support: Set to extend (the slice replaces an earlier support at the same place).
        volume: ``(D, H, W)`` raw intensities.
        mask: ``(H, W)`` boolean corrected mask of slice ``index``.
        axis: Slicing axis.
        index: Slice index.
        label: Label value the mask stands for.
        window: Intensity window policy or ``(low, high)``.
        source: Identity of ``volume`` (None: computed).

    Raises:
        ValueError: Empty mask, wrong shape or slice out of range.
    """
    volume = np.asarray(volume)
    check_slices([index], volume.shape, axis)
    img = np.take(volume, index, axis)
    mask = np.asarray(mask, bool)
    if mask.shape != img.shape:
        raise ValueError(f"mask {mask.shape} and slice {img.shape} differ in shape")
    if not mask.any():
        raise ValueError("the corrected mask is empty: nothing to add to the support set")
    src = source if source is not None else volume_source(volume)
    affected = affected_slices(support, src, axis, index, volume.shape[axis])
    support.examples = [
        e for e in support.examples if not (e.source == src and e.axis == axis and e.index == index)
    ]
    win = intensity_window(volume, window)
    support.add(img, mask.astype(np.int32) * label, win, src, axis, index)
    return affected
