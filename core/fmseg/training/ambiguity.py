"""Ambiguous targets for Tyche: label perturbations standing in for several annotators.

The corpus has one annotation per structure, but Tyche's best-candidate loss only teaches
candidates to spread if the target of a query is itself uncertain. As in Tyche (Rakic et al.,
CVPR 2024), the *query target* of each episode is replaced, with probability ``p``, by a
simulated rater's version of it; the supports keep the reference masks, so the task (which
structure) stays defined by them while the query's boundary, extent and parts vary. Were the
supports drawn by the same simulated rater, the rater would be predictable from them and the
candidates would collapse onto it again.

Perturbations of a binary ``(H, W)`` mask (numpy, deterministic for a given generator):

* :func:`jitter_boundary`: the boundary moves along its normal by a smooth random amount (a
  global grow/shrink of up to ``shift`` pixels plus a local displacement of amplitude
  ``local``), then a smooth elastic warp of amplitude ``warp`` pixels;
* :func:`merge_neighbour`: the union with one touching label of the slice's label map (never a
  held-out label, never one larger than the target);
* :func:`split_parts`: the target cut into 3-5 random sub-regions (Voronoi cells of random
  seeds inside it), one of which the rater leaves out.

:class:`RaterEpisodes` is an :class:`~fmseg.training.episodes.EpisodeSampler` whose episodes
carry such a target (it keeps the query slice's label map for merges).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from .episodes import EpisodeSampler, Mix


@dataclass(frozen=True)
class Ambiguity:
    """How often and how strongly query targets are perturbed (pixels at 128x128).

    Attributes:
        p: Probability that an episode's query target is a simulated rater's version.
        jitter: Relative weight of a boundary-only perturbation.
        merge: Relative weight of a merge with a neighbouring label (then jitter).
        split: Relative weight of leaving out a random sub-region (then jitter).
        shift: Largest global grow (+) or shrink (-) of the boundary.
        local: Amplitude (standard deviation) of the smooth local boundary displacement.
        warp: Amplitude (standard deviation) of the smooth elastic displacement.
    """

    p: float = 0.8
    jitter: float = 0.6
    merge: float = 0.2
    split: float = 0.2
    shift: float = 3.0
    local: float = 1.5
    warp: float = 1.0


def smooth_field(shape: tuple[int, int], rng: np.random.Generator, cells: int = 5) -> np.ndarray:
    """A smooth random ``(H, W)`` field with zero mean and unit standard deviation.

    Cubic interpolation of ``(cells, cells)`` Gaussian values: features ~H / cells wide.
    """
    coarse = rng.standard_normal((cells, cells))
    zoom = (shape[0] / cells, shape[1] / cells)
    field = ndimage.zoom(coarse, zoom, order=3, mode="nearest")[: shape[0], : shape[1]]
    return (field - field.mean()) / (field.std() + 1e-8)


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` distance to the boundary in pixels: negative inside, positive outside."""
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    return np.where(mask, 0.5 - inside, outside - 0.5)


def jitter_boundary(
    mask: np.ndarray,
    rng: np.random.Generator,
    shift: float = 3.0,
    local: float = 1.5,
    warp: float = 1.0,
) -> np.ndarray:
    """Another rater's boundary of an ``(H, W)`` mask; same shape and dtype.

    The boundary moves along its normal by ``uniform(-shift, shift) + local * field`` pixels
    (``field`` smooth, unit variance), then the mask is warped by a smooth displacement of
    ``warp`` pixels. An empty mask, or one that the perturbation would erase, is returned as is.
    """
    m = np.asarray(mask) > 0.5 if np.asarray(mask).dtype != bool else np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D (H, W), got shape {m.shape}")
    if not m.any() or m.all():
        return mask.copy()
    offset = rng.uniform(-shift, shift) + local * smooth_field(m.shape, rng)
    out = signed_distance(m) < offset
    if warp > 0:
        yy, xx = np.mgrid[: m.shape[0], : m.shape[1]].astype(np.float64)
        dy, dx = warp * smooth_field(m.shape, rng), warp * smooth_field(m.shape, rng)
        out = ndimage.map_coordinates(out.astype(np.float32), [yy + dy, xx + dx], order=1) > 0.5
    return (out if out.any() else m).astype(np.asarray(mask).dtype)


def merge_neighbour(
    mask: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    excluded: tuple[int, ...] = (),
    max_ratio: float = 1.0,
) -> np.ndarray:
    """The union of an ``(H, W)`` mask with one touching label of ``labels``; same dtype.

    Candidates touch the mask within 2 pixels, are not background, not ``excluded`` (held-out
    structures are never merged into a target) and have at most ``max_ratio`` times the mask's
    area outside it. Without a candidate the mask is returned unchanged.
    """
    m = np.asarray(mask) > 0.5
    if labels.shape != m.shape:
        raise ValueError(f"labels {labels.shape} and mask {m.shape} must have the same shape")
    ring = ndimage.binary_dilation(m, iterations=2) & ~m
    values = sorted(set(np.unique(labels[ring]).tolist()) - {0} - set(excluded))
    area = max(int(m.sum()), 1)
    values = [v for v in values if ((labels == v) & ~m).sum() <= max_ratio * area]
    if not values:
        return mask.copy()
    v = values[int(rng.integers(len(values)))]
    return (m | (labels == v)).astype(np.asarray(mask).dtype)


def split_parts(mask: np.ndarray, rng: np.random.Generator, parts: tuple[int, int] = (3, 5)):
    """An ``(H, W)`` mask less one of its random sub-regions; same dtype.

    The mask is cut into ``parts[0]..parts[1]`` Voronoi cells of random seed pixels inside it
    and one cell is dropped (a rater who leaves out a piece). Masks under 16 pixels are
    returned unchanged.
    """
    m = np.asarray(mask) > 0.5
    ys, xs = np.nonzero(m)
    if len(ys) < 16:
        return mask.copy()
    n = int(rng.integers(parts[0], parts[1] + 1))
    seeds = rng.choice(len(ys), size=n, replace=False)
    d = (ys[:, None] - ys[seeds][None]) ** 2 + (xs[:, None] - xs[seeds][None]) ** 2  # (P, n)
    cell = d.argmin(1)
    drop = int(rng.integers(n))
    out = np.zeros_like(m)
    out[ys[cell != drop], xs[cell != drop]] = True
    return out.astype(np.asarray(mask).dtype)


def perturb_target(
    mask: np.ndarray,
    rng: np.random.Generator,
    labels: np.ndarray | None = None,
    excluded: tuple[int, ...] = (),
    cfg: Ambiguity = Ambiguity(),
) -> np.ndarray:
    """A simulated rater's ``(H, W)`` target (with probability ``cfg.p``; else the mask).

    Args:
        mask: ``(H, W)`` reference target (bool or {0, 1} numbers); the dtype is kept.
        rng: Random generator (the only source of randomness).
        labels: ``(H, W)`` label map of the slice, for merges (None: no merge).
        excluded: Label values never merged (held-out structures).
        cfg: Probabilities and amplitudes.
    """
    if rng.random() >= cfg.p:
        return mask.copy()
    kinds = ["jitter", "split"] + (["merge"] if labels is not None else [])
    w = np.array([getattr(cfg, k) for k in kinds], float)
    kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
    if kind == "merge":
        mask = merge_neighbour(mask, labels, rng, excluded)
    elif kind == "split":
        mask = split_parts(mask, rng)
    return jitter_boundary(mask, rng, cfg.shift, cfg.local, cfg.warp)


def perturb_query(qm: torch.Tensor, rng: np.random.Generator, labels=None, excluded=(), cfg=None):
    """:func:`perturb_target` on a ``(1, H, W)`` float query mask (torch in, torch out)."""
    lab = None if labels is None else np.asarray(labels).reshape(qm.shape[-2:])
    out = perturb_target(qm[0].numpy() > 0.5, rng, lab, excluded, cfg or Ambiguity())
    return torch.from_numpy(out).float()[None]


class RaterEpisodes(EpisodeSampler):
    """Corpus episodes whose query target is a simulated rater's (see the module docstring).

    Same arguments as :class:`~fmseg.training.episodes.EpisodeSampler`, plus ``ambiguity``.
    :meth:`episode` returns what the base class returns, with the query mask perturbed.
    """

    def __init__(self, records, split="train", mix: Mix | None = None, ambiguity=Ambiguity()):
        super().__init__(records, split, mix or Mix())
        self.ambiguity = ambiguity
        self._last: tuple[torch.Tensor, tuple[int, ...]] | None = None

    def slices(self, st, idx, kind, gen, appearance):
        """The base class's slices; remembers the labels of the last call (the query's)."""
        img, lab, appearance = super().slices(st, idx, kind, gen, appearance)
        self._last = (lab, tuple(self.stacks[st.stack].record.excluded))
        return img, lab, appearance

    def episode(self, n_support: int, rng: np.random.Generator):
        """``(S, 1, H, W)`` support images and masks, ``(1, H, W)`` query image and rater mask."""
        self._last = None  # random-shape episodes do not go through slices()
        si, sm, qi, qm = super().episode(n_support, rng)
        labels, excluded = self._last if self._last is not None else (None, ())
        labels = None if labels is None else labels[-1].numpy()
        return si, sm, qi, perturb_query(qm, rng, labels, excluded, self.ambiguity)
