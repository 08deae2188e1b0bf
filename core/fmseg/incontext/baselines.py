"""Honest baselines an in-context model must beat (same interface as the backends).

* :class:`IntensityBackend`: an intensity window fitted on the support slices;
* :class:`NearestBackend`: copy the mask of the nearest support slice;
* :class:`InterpolationBackend`: signed-distance interpolation between the neighbouring
  support masks of the same volume (what Slicer's "Fill between slices" gives for free).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

from ..interactive.refine import largest_component
from ..metrics import dice
from .backends import Backend, Position, Supports, resize
from .prior import interpolate, signed_distance


class IntensityBackend(Backend):
    """Threshold window ``[lo, hi]`` chosen to maximise Dice on the supports themselves.

    Candidate windows come from percentiles of the supports' foreground intensities; keeping
    only the largest connected component (and filling holes) is adopted when it helps on the
    supports too.
    """

    name = "intensity"
    LOWS = (0.0, 2.5, 5.0, 10.0, 20.0)
    HIGHS = (80.0, 90.0, 95.0, 99.0, 100.0)

    def _apply(self, img, lo, hi, cc):
        m = (img >= lo) & (img <= hi)
        return ndi.binary_fill_holes(largest_component(m)) if cc else m

    def prepare(self, supports: Supports) -> tuple[float, float, bool]:
        """The best ``(lo, hi, largest_component)`` on the supports (scored at half size)."""
        imgs = [np.asarray(i)[::2, ::2] for i in supports.images]
        masks = [np.asarray(m)[::2, ::2] for m in supports.masks]
        pairs = zip(supports.images, supports.masks, strict=True)
        fg = np.concatenate([np.asarray(i)[np.asarray(m, bool)] for i, m in pairs])
        best = (-1.0, (0.0, 1.0, False))
        for plo in self.LOWS:
            for phi in self.HIGHS:
                lo, hi = (float(v) for v in np.percentile(fg, (plo, phi)))
                for cc in (False, True):
                    d = np.mean(
                        [
                            dice(self._apply(i, lo, hi, cc), m)
                            for i, m in zip(imgs, masks, strict=True)
                        ]
                    )
                    if d > best[0]:
                        best = (d, (lo, hi, cc))
        return best[1]

    def predict(self, state, queries: np.ndarray, positions=None) -> np.ndarray:
        """Apply the fitted window to each query."""
        lo, hi, cc = state
        return np.stack([self._apply(q, lo, hi, cc) for q in queries]).astype(np.float32)


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    t = resize(torch.as_tensor(mask, dtype=torch.float32)[None], shape, mask=False)
    return t[0].numpy()


class NearestBackend(Backend):
    """Copy the nearest support's mask.

    Nearest by slice index when both come from the same volume and axis, otherwise by image
    similarity (mean squared difference at 64x64).
    """

    name = "nearest"

    def prepare(self, supports: Supports) -> Supports:
        """Nothing to precompute."""
        return supports

    def _nearest(self, sup: Supports, query: np.ndarray, pos: Position | None) -> int:
        if pos is not None and sup.positions is not None:
            same = [
                (abs(p[2] - pos[2]), i)
                for i, p in enumerate(sup.positions)
                if p[0] == pos[0] and p[1] == pos[1]
            ]
            if same:
                return min(same)[1]
        q = resize(torch.as_tensor(query)[None], (64, 64))
        d = [
            float(((resize(torch.as_tensor(i)[None], (64, 64)) - q) ** 2).mean())
            for i in sup.images
        ]
        return int(np.argmin(d))

    def predict(self, state: Supports, queries: np.ndarray, positions=None) -> np.ndarray:
        """The nearest support mask, resized to each query."""
        out = []
        for n, q in enumerate(queries):
            i = self._nearest(state, q, positions[n] if positions else None)
            out.append(_resize_mask(state.masks[i], q.shape))
        return np.stack(out).astype(np.float32)


class InterpolationBackend(Backend):
    """Signed-distance interpolation between the two support slices around each query.

    Needs positions from one volume and axis; queries outside the annotated range get the
    nearest end's mask.
    """

    name = "interpolation"

    def prepare(self, supports: Supports):
        """Signed distance maps sorted by slice index, per (source, axis)."""
        if supports.positions is None:
            raise ValueError("interpolation needs the slice positions of the supports")
        groups: dict[tuple[str, int], list] = {}
        for p, m in zip(supports.positions, supports.masks, strict=True):
            groups.setdefault((p[0], p[1]), []).append((p[2], signed_distance(m)))
        return groups

    def predict(self, state, queries: np.ndarray, positions=None) -> np.ndarray:
        """Interpolated masks; raises when a query's volume/axis has no support."""
        if positions is None:
            raise ValueError("interpolation needs the slice positions of the queries")
        out = []
        for q, pos in zip(queries, positions, strict=True):
            sdfs = state.get((pos[0], pos[1]))
            if not sdfs:
                raise ValueError(f"no support slice from {pos[0]!r} along axis {pos[1]}")
            sdf = interpolate(pos[2], sdfs).sdf
            out.append(_resize_mask((sdf > 0).astype(np.float32), q.shape))
        return np.stack(out).astype(np.float32)
