"""Uncertainty maps of a stack of ``K`` candidate segmentations, pure numpy.

Scores (Dice, GED, best-candidate Dice, AUROC) are in :mod:`fmseg.metrics`.

Candidates are probabilities (or binary masks) of shape ``(K, ...)``; every function works on
2D slices and 3D volumes alike. References are ``(R, ...)`` stacks of binary masks (several
annotators) or a single ``(...)`` mask.

The two maps a clinician is shown, their names, legends and display rule live here once
(:data:`MAPS`, :func:`uncertainty_map`, :func:`legend`, :data:`DISPLAY_RANGE`,
:func:`colour_ramp`); napari, Slicer and the CLI call these and only display the answer:

- **disagreement** (the default): how much the candidates disagree with each other
  (:func:`mutual_information`). 0 where every candidate says the same thing, even if each is
  unsure; 1 bit where half the candidates are sure of the structure and half of background.
- **total uncertainty**: the entropy of the mean probability (:func:`entropy`). 0 where the
  mean is 0 or 1, 1 bit where it is 0.5 -- also where all candidates agree on 0.7, so on a
  network with soft probabilities it can cover a whole organ the candidates agree on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .metrics import as_stack, pairwise_dice


def mean_probability(samples: np.ndarray) -> np.ndarray:
    """Mean over candidates, ``(K, ...) -> (...)``."""
    return as_stack(samples, "samples").mean(0)


def variance(samples: np.ndarray) -> np.ndarray:
    """Per-voxel variance over candidates, ``(K, ...) -> (...)``."""
    return as_stack(samples, "samples").var(0)


def _bits(p: np.ndarray, eps: float) -> np.ndarray:
    p = np.clip(p, eps, 1 - eps)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def entropy(samples: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Total uncertainty: binary entropy (bits, in [0, 1]) of the mean, ``(K, ...) -> (...)``."""
    return _bits(mean_probability(samples), eps)


def mutual_information(samples: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Disagreement between candidates (bits, in [0, 1]), ``(K, ...) -> (...)``.

    Entropy of the mean minus the mean entropy of the candidates (BALD's mutual information):
    0 where every candidate says the same thing (however unsure each one is), 1 bit where half
    the candidates are certain of foreground and half certain of background.
    """
    s = as_stack(samples, "samples").astype(np.float64)
    return np.clip(_bits(s.mean(0), eps) - _bits(s, eps).mean(0), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class MapSpec:
    """One uncertainty map: how it is computed and what its values mean.

    Attributes:
        title: Name shown to the clinician (layer, volume node, colour bar).
        zero: What a value of 0 means.
        top: What the maximum (1 bit) means.
        compute: ``(K, ...) samples -> (...)`` map in bits.
    """

    title: str
    zero: str
    top: str
    compute: Callable[[np.ndarray], np.ndarray]

    @property
    def text(self) -> str:
        """One-line legend: ``"<title> (bits): 0 = ...; 1 bit = ..."``."""
        return f"{self.title} (bits): 0 = {self.zero}; 1 bit = {self.top}"


#: The maps front ends offer, the default first. Keys are the names used in code and CLI.
MAPS: dict[str, MapSpec] = {
    "disagreement": MapSpec(
        "disagreement",
        "all candidates agree",
        "candidates split evenly between structure and background",
        mutual_information,
    ),
    "total": MapSpec(
        "total uncertainty",
        "certain",
        "probability 0.5 (candidates split, or all unsure)",
        entropy,
    ),
}
DEFAULT_MAP = "disagreement"
#: Fixed display range of every map (bits): never auto contrast, which blows up tiny values.
DISPLAY_RANGE = (0.0, 1.0)
#: Colour-ramp control points ``(value in bits, R, G, B, alpha)``: 0 fully transparent, so a
#: confident structure shows the image unchanged; opacity grows with the map.
_RAMP = (
    (0.0, 1.0, 1.0, 0.0, 0.0),
    (0.1, 1.0, 1.0, 0.0, 0.15),
    (0.5, 1.0, 0.5, 0.0, 0.6),
    (1.0, 1.0, 0.0, 0.0, 0.85),
)


def _spec(kind: str) -> MapSpec:
    if kind not in MAPS:
        raise ValueError(f"unknown uncertainty map {kind!r}: choose one of {', '.join(MAPS)}")
    return MAPS[kind]


def uncertainty_map(samples: np.ndarray, kind: str = DEFAULT_MAP) -> np.ndarray:
    """The map ``kind`` of :data:`MAPS` (bits, in [0, 1]) of ``(K, ...)`` samples -> ``(...)``.

    Raises:
        ValueError: Unknown ``kind``, or ``samples`` not a stack.
    """
    return np.asarray(_spec(kind).compute(samples), np.float32)


def legend(kind: str = DEFAULT_MAP) -> MapSpec:
    """Title and the meaning of 0 and of 1 bit for the map ``kind`` (``.text``: one line)."""
    return _spec(kind)


def colour_ramp(n: int = 256) -> np.ndarray:
    """``(n, 4)`` RGBA in [0, 1] over :data:`DISPLAY_RANGE`, row 0 fully transparent."""
    ramp = np.asarray(_RAMP)
    x = np.linspace(*DISPLAY_RANGE, n)
    return np.stack([np.interp(x, ramp[:, 0], ramp[:, c]) for c in range(1, 5)], axis=1)


def ramp_controls() -> tuple[np.ndarray, np.ndarray]:
    """The ramp's control points: ``(P,)`` values in bits and ``(P, 4)`` RGBA colours."""
    ramp = np.asarray(_RAMP)
    return ramp[:, 0].copy(), ramp[:, 1:].copy()


def diversity(masks: np.ndarray) -> float:
    """Mean pairwise Dice *distance* ``1 - Dice`` over distinct pairs (0: all identical)."""
    d = pairwise_dice(masks)
    k = len(d)
    if k < 2:
        return 0.0
    return float((1 - d)[np.triu_indices(k, 1)].mean())
