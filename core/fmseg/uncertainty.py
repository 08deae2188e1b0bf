"""Uncertainty maps of a stack of ``K`` candidate segmentations, pure numpy.

Scores (Dice, GED, best-candidate Dice, AUROC) are in :mod:`fmseg.metrics`.

Candidates are probabilities (or binary masks) of shape ``(K, ...)``; every function works on
2D slices and 3D volumes alike. References are ``(R, ...)`` stacks of binary masks (several
annotators) or a single ``(...)`` mask.
"""

from __future__ import annotations

import numpy as np

from .metrics import as_stack, pairwise_dice


def mean_probability(samples: np.ndarray) -> np.ndarray:
    """Mean over candidates, ``(K, ...) -> (...)``."""
    return as_stack(samples, "samples").mean(0)


def variance(samples: np.ndarray) -> np.ndarray:
    """Per-voxel variance over candidates, ``(K, ...) -> (...)``."""
    return as_stack(samples, "samples").var(0)


def entropy(samples: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Binary entropy (bits, in [0, 1]) of the mean probability, ``(K, ...) -> (...)``."""
    p = np.clip(mean_probability(samples), eps, 1 - eps)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def _bits(p: np.ndarray, eps: float) -> np.ndarray:
    p = np.clip(p, eps, 1 - eps)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def mutual_information(samples: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Disagreement between candidates (bits, in [0, 1]), ``(K, ...) -> (...)``.

    Entropy of the mean minus the mean entropy of the candidates (BALD's mutual information):
    0 where every candidate says the same thing (however unsure each one is), 1 bit where half
    the candidates are certain of foreground and half certain of background.
    """
    s = as_stack(samples, "samples").astype(np.float64)
    return np.clip(_bits(s.mean(0), eps) - _bits(s, eps).mean(0), 0.0, 1.0)


def diversity(masks: np.ndarray) -> float:
    """Mean pairwise Dice *distance* ``1 - Dice`` over distinct pairs (0: all identical)."""
    d = pairwise_dice(masks)
    k = len(d)
    if k < 2:
        return 0.0
    return float((1 - d)[np.triu_indices(k, 1)].mean())
