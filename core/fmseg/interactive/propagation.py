"""Propagate a slice mask through a volume, MedSAM style, with drift and leak checks.

Each next slice is prompted with the box of the previous slice's mask (plus a margin). The
prediction is then restricted to components touching the (dilated) previous mask, which
stops leaks into neighbouring organs, and propagation stops where the object ends (tiny
area), where the shape jumps (low overlap with the previous slice) or where it reaches a
slice the clinician prompted (an anchor: their correction wins).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..metrics import dice
from ..progress import Progress, Work
from .prompts import Box

#: ``segment(index, box) -> (H, W)`` bool mask of slice ``index`` prompted with ``box``.
BoxSegmenter = Callable[[int, Box], np.ndarray]


@dataclass(frozen=True)
class PropagationSettings:
    """Tunable rules.

    ``margin``, ``min_area`` and ``reach`` were measured on LiTS-117; ``min_overlap`` 0.7
    (was 0.5) was chosen on a training-split structure of the corpus and raised held-out Dice
    (``benchmarks/bench_propagation.py --corpus``, docs/accuracy.md).

    Attributes:
        margin: Pixels added around the previous mask's box.
        min_area: A prediction below this many pixels means the object has ended.
        min_overlap: Stop when Dice with the previous slice's mask falls below this.
        reach: Dilation radius (pixels) of the previous mask; components outside are leaks.
    """

    margin: float = 3.0
    min_area: int = 10
    min_overlap: float = 0.7
    reach: int = 5


@dataclass
class PropagationResult:
    """Where propagation went.

    Attributes:
        first: Lowest slice index holding the object.
        last: Highest slice index holding the object.
        reasons: Why each direction stopped, keyed ``"up"`` / ``"down"``.
    """

    first: int
    last: int
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """Both stopping reasons in one line."""
        return "; ".join(f"{k}: {v}" for k, v in self.reasons.items())


def keep_connected(mask: np.ndarray, reference: np.ndarray, reach: int) -> np.ndarray:
    """Components of ``mask`` touching ``reference`` dilated by ``reach`` pixels."""
    if not mask.any():
        return mask
    grown = ndimage.binary_dilation(reference, iterations=reach) if reach else reference
    lab, n = ndimage.label(mask)
    keep = np.unique(lab[grown & mask])
    return np.isin(lab, keep[keep > 0])


def next_slice_mask(
    segment: BoxSegmenter, index: int, prev: np.ndarray, cfg: PropagationSettings
) -> tuple[np.ndarray, str]:
    """Predict slice ``index`` from the previous mask; returns (mask, stop reason or '')."""
    mask = keep_connected(segment(index, Box.from_mask(prev, cfg.margin)), prev, cfg.reach)
    if mask.sum() < cfg.min_area:
        return mask, f"object ended at slice {index}"
    if dice(mask, prev) < cfg.min_overlap:
        return mask, f"shape changed too much at slice {index} (possible leak)"
    return mask, ""


def propagate_iter(
    masks: np.ndarray,
    index: int,
    segment: BoxSegmenter,
    anchors: Collection[int] = (),
    settings: PropagationSettings | None = None,
) -> Work[PropagationResult]:
    """Propagate the mask of slice ``index`` up and down the stack, writing into ``masks``.

    Args:
        masks: ``(N, H, W)`` boolean slices, written in place (e.g. a session's working mask
            with the propagation axis moved first: ``np.moveaxis(mask, axis, 0)``).
        index: The seed slice.
        segment: ``segment(i, box) -> (H, W)`` bool mask of slice ``i`` prompted by ``box``.
        anchors: Slices the user prompted: propagation stops there and keeps them.
        settings: The stopping rules.

    Yields:
        :class:`~fmseg.progress.Progress` per slice.

    Returns:
        :class:`PropagationResult`; ``masks`` holds the 3D object.

    Raises:
        ValueError: The seed slice has no mask yet.
    """
    cfg = settings or PropagationSettings()
    seed = masks[index].copy()
    if not seed.any():
        raise ValueError(f"segment the object on slice {index} first: its mask is empty")
    n = len(masks)
    result = PropagationResult(index, index)
    done = 0
    for name, step in (("up", 1), ("down", -1)):
        prev, i, reason = seed, index + step, "reached the end of the volume"
        while 0 <= i < n:
            if i in anchors:
                reason = f"reached corrected slice {i}"
                break
            mask, stop = next_slice_mask(segment, i, prev, cfg)
            if stop:
                reason = stop
                _clear_until_anchor(masks, i, step, anchors)
                break
            masks[i] = mask
            result.first, result.last = min(result.first, i), max(result.last, i)
            prev, i, done = mask, i + step, done + 1
            yield Progress(done, n - 1, f"slice {i - step}: {int(mask.sum())} px")
        result.reasons[name] = reason
    return result


def _clear_until_anchor(masks: np.ndarray, start: int, step: int, anchors: Collection[int]):
    """Remove stale object voxels beyond a stop, up to the next anchor slice."""
    i = start
    while 0 <= i < len(masks) and i not in anchors:
        masks[i] = False
        i += step
