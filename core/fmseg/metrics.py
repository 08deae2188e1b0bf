"""Scores against ground truth and between candidates, pure numpy: the one place they live.

Dice, pairwise Dice, best-candidate Dice and the generalised energy distance (GED) of a stack of
``K`` candidates against ``R`` references, AUROC of an error detector, error rate by score
decile, and the same AUROC restricted to a band around the reference's boundary (where the
errors of a good segmentation are, so a map cannot score well by only being 0 far away).
Candidates are ``(K, ...)`` probabilities or binary masks; references are ``(R, ...)``
binary masks (several annotators) or one ``(...)`` mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def as_stack(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` as a float32 ``(K, ...)`` stack; one clear error naming ``what`` otherwise."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2:
        raise ValueError(f"{what} must be a stack (K, ...) of at least one 1D map, got {x.shape}")
    return x


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary maps; 1 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float(np.logical_and(a, b).sum()) / s


def pairwise_dice(masks: np.ndarray) -> np.ndarray:
    """``(K, K)`` Dice between every pair of binary candidates (diagonal 1)."""
    m = as_stack(masks, "masks") > 0.5
    k = len(m)
    out = np.ones((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            out[i, j] = out[j, i] = dice(m[i], m[j])
    return out


def _refs(references: np.ndarray, like: np.ndarray) -> np.ndarray:
    r = np.asarray(references) > 0.5
    return r[None] if r.shape == like.shape[1:] else r


def best_candidate_dice(samples: np.ndarray, references: np.ndarray) -> float:
    """Mean over references of the best candidate's Dice (candidates thresholded at 0.5)."""
    s = as_stack(samples, "samples") > 0.5
    refs = _refs(references, s)
    return float(np.mean([max(dice(c, r) for c in s) for r in refs]))


def ged(samples: np.ndarray, references: np.ndarray) -> float:
    """Generalised energy distance with ``d = 1 - Dice`` (lower is better).

    ``GED = 2 E[d(s, r)] - E[d(s, s')] - E[d(r, r')]`` over candidates ``s`` and references
    ``r``, expectations over all pairs (including identical ones, as in the literature).
    """
    s = as_stack(samples, "samples") > 0.5
    refs = _refs(references, s)

    def mean_d(a, b):
        return float(np.mean([1 - dice(x, y) for x in a for y in b]))

    return 2 * mean_d(s, refs) - mean_d(s, s) - mean_d(refs, refs)


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for detecting ``positive`` voxels (ties averaged).

    Raises:
        ValueError: When ``positive`` is all true or all false.
    """
    s = np.asarray(score, np.float64).ravel()
    y = np.asarray(positive, bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative voxels")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks for ties
    uniq, start, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = start + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def error_rate_by_decile(score: np.ndarray, error: np.ndarray) -> list[float]:
    """Fraction of wrong voxels in each tenth of the voxels ranked by ``score`` (lowest first).

    Equal-count deciles by rank (ties in stable order), so many equal scores (e.g. entropy 0
    far from any boundary) still give ten filled bins.
    """
    s, e = np.asarray(score).ravel(), np.asarray(error, bool).ravel()
    order = np.argsort(s, kind="stable")
    return [float(chunk.mean()) for chunk in np.array_split(e[order], 10)]


def _slices(mask: np.ndarray) -> np.ndarray:
    """``mask`` as ``(N, H, W)``: every 2D slice over the last two axes."""
    m = np.asarray(mask, bool)
    if m.ndim < 2:
        raise ValueError(f"reference must be a 2D slice or a stack of them, got {m.shape}")
    return m.reshape(-1, *m.shape[-2:])


def boundary_band(reference: np.ndarray, width: float = 10) -> np.ndarray:
    """Pixels within ``width`` of the reference's boundary, inside or outside, per 2D slice.

    Distances are Euclidean in pixels, within each slice over the last two axes (the slices a
    clinician reads): the distance transform of the mask (inside) and of its complement
    (outside). Slices where the reference is empty or fills the slice have no band.

    Args:
        reference: ``(..., H, W)`` binary mask.
        width: Band half-width in pixels (> 0).

    Returns:
        ``(..., H, W)`` bool.
    """
    if width <= 0:
        raise ValueError(f"band width must be > 0 pixels, got {width}")
    ref = _slices(reference)
    band = np.zeros_like(ref)
    for i, m in enumerate(ref):
        if m.any() and not m.all():
            inside, outside = ndimage.distance_transform_edt(m), ndimage.distance_transform_edt(~m)
            band[i] = np.where(m, inside, outside) <= width
    return band.reshape(np.shape(reference))


def interior(reference: np.ndarray, width: float = 10) -> np.ndarray:
    """The reference's pixels farther than ``width`` from its boundary (per 2D slice)."""
    return np.asarray(reference, bool) & ~boundary_band(reference, width)


def band_auroc(
    score: np.ndarray, error: np.ndarray, reference: np.ndarray, width: float = 10
) -> float:
    """AUROC of ``score`` detecting ``error`` pixels within :func:`boundary_band` of ``reference``.

    A map as error detector, judged where errors happen: near the boundary. All arrays have the
    same shape ``(..., H, W)``.

    Raises:
        ValueError: Shapes differ, or the band holds no error or no correct pixel.
    """
    score, error = np.asarray(score), np.asarray(error, bool)
    if not score.shape == error.shape == np.shape(reference):
        raise ValueError(
            f"score, error and reference shapes differ: {score.shape}, {error.shape},"
            f" {np.shape(reference)}"
        )
    band = boundary_band(reference, width)
    return auroc(score[band], error[band])


def fraction_above(score: np.ndarray, where: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of the pixels ``where`` with ``score > threshold`` (nan when ``where`` is empty)."""
    where = np.asarray(where, bool)
    n = int(where.sum())
    return float((np.asarray(score)[where] > threshold).sum() / n) if n else float("nan")
