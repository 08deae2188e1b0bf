"""Episodes with a simulated prior for the prior-conditioned in-context network.

A clinician who runs in-context segmentation on a volume has usually annotated a few slices of
*that* volume. These episodes simulate it: the supports are annotated slices of the query's own
volume placed the way people annotate, and the query's ``prior`` channel
(:mod:`fmseg.incontext.prior`) is the signed-distance interpolation of their masks:

* ``interleaved``: ``S`` supports evenly spaced (with jitter) over the structure's extent, the
  query anywhere in it or up to 2 slices beyond (where the structure may be absent);
* ``beyond``: supports on one side, the query 1-20 slices past the last one (extrapolation);
* ``scattered``: supports and query drawn at random from the structure's slices;
* ``plain``: an episode of :class:`~fmseg.training.episodes.EpisodeSampler` (real, synthetic,
  random shapes, cross-subject) with no prior: the plain in-context path.

Priors are then corrupted now and then (shifted, grown or shrunk by a few pixels, dropped), so
the network learns when not to trust them. Clicks are added by the trainer from the network's
own errors (:func:`fmseg.incontext.prior.corrective_click`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..incontext.prior import closeness, interpolate_masks, prior_from_sdf
from .episodes import EpisodeSampler, split_target


@dataclass(frozen=True)
class PriorMix:
    """Shares of support layouts and prior corruptions (probabilities)."""

    interleaved: float = 0.4
    beyond: float = 0.2
    scattered: float = 0.1
    plain: float = 0.3
    shift: float = 0.05  # move the prior by up to 6 px
    grow: float = 0.05  # grow or shrink it by up to 4 px
    drop: float = 0.05  # same-volume supports but no prior


class PriorEpisodes:
    """Draws ``(supports, masks, query channels, query mask)`` episodes.

    Args:
        sampler: The corpus episode sampler (its structures, stacks and plain episodes).
        mix: Layout and corruption shares.
    """

    def __init__(self, sampler: EpisodeSampler, mix: PriorMix = PriorMix()):
        self.sampler, self.mix = sampler, mix

    def episode(self, n_support: int, rng: np.random.Generator, layout: str | None = None):
        """``(S, 1, H, W)`` x2, ``(6, H, W)`` query channels, ``(1, H, W)`` query mask.

        Args:
            n_support: Number of support slices.
            rng: Random generator.
            layout: Force a layout (validation); None draws one from the mix.
        """
        m = self.mix
        if layout is None:
            names = ("interleaved", "beyond", "scattered", "plain")
            p = np.array([m.interleaved, m.beyond, m.scattered, m.plain])
            layout = names[int(rng.choice(4, p=p / p.sum()))]
        if layout == "plain":
            si, sm, qi, qm = self.sampler.episode(n_support, rng)
            return si, sm, plain_query(qi[0]), qm
        return self._volume_episode(n_support, rng, layout)

    def _volume_episode(self, n: int, rng, layout: str):
        s = self.sampler
        kinds = [k for k in ("real", "synth") if k in s.by_kind]
        p = np.array([getattr(s.mix, k) for k in kinds], float)
        kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
        idx, w = s.by_kind[kind]
        st = s.structures[int(rng.choice(idx, p=w))]
        st, values, angle = s.augment_target(st, rng)
        depth = len(s.stacks[st.stack].labels)
        sup, q = layout_slices(st.slices, depth, n, layout, rng)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        img, lab, _ = s.slices(st, np.r_[sup, q], kind, gen, None)
        masks, _ = split_target(lab, values, angle, None)
        if angle is not None:  # cut every slice by the same line (the supports' centre)
            _, centre = split_target(lab[:-1], values, angle, None)
            masks, _ = split_target(lab, values, angle, centre)
        prior, near = self._prior(sup, masks[:-1].numpy() > 0.5, int(q), rng)
        q_img = img[-1].numpy()
        chans = np.zeros((6, *q_img.shape), np.float32)
        chans[0] = q_img
        if prior is not None:
            chans[1], chans[2] = prior, near
        return img[:-1, None], masks[:-1, None], torch.from_numpy(chans), masks[-1:]

    def _prior(self, sup, masks: np.ndarray, q: int, rng):
        """``(prior, closeness)`` at slice ``q`` from the supports, corrupted now and then."""
        m = self.mix
        if rng.random() < m.drop:
            return None, 0.0
        interp = interpolate_masks(q, sup, masks)
        sdf = interp.sdf
        if rng.random() < m.grow:
            sdf = sdf + float(rng.uniform(-4, 4))
        if rng.random() < m.shift:
            dy, dx = (int(v) for v in rng.integers(-6, 7, 2))
            sdf = np.roll(sdf, (dy, dx), axis=(0, 1))
        return prior_from_sdf(sdf), closeness(interp.distance)


def plain_query(image: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` image -> ``(6, H, W)`` query channels with no prior and no clicks."""
    out = torch.zeros(6, *image.shape)
    out[0] = image
    return out


def layout_slices(slices: np.ndarray, depth: int, n: int, layout: str, rng: np.random.Generator):
    """``(support indices, query index)`` for one of the layouts of this module.

    Args:
        slices: Indices of the slices holding the structure (sorted).
        depth: Number of slices of the stack.
        n: Number of supports.
        layout: ``interleaved``, ``beyond`` or ``scattered``.
        rng: Random generator.
    """
    sup, q = _layout(slices, depth, n, layout, rng)
    if len(sup) < n:  # short structures: repeat supports so every episode has n
        sup = np.sort(np.r_[sup, rng.choice(sup, n - len(sup))])
    return sup, q


def _layout(slices: np.ndarray, depth: int, n: int, layout: str, rng: np.random.Generator):
    lo, hi = int(slices.min()), int(slices.max())
    if layout == "scattered":
        pick = rng.choice(slices, size=n + 1, replace=len(slices) < n + 1)
        return np.sort(pick[:-1]), int(pick[-1])
    if layout == "interleaved":
        spacing = max(1.0, (hi - lo) / max(n, 1))
        pos = lo + spacing * (np.arange(n) + 0.5) + rng.uniform(-0.25, 0.25, n) * spacing
        sup = np.unique(np.clip(np.round(pos), lo, hi).astype(int))
        cand = np.setdiff1d(np.arange(max(0, lo - 2), min(depth, hi + 3)), sup)
        q = int(rng.choice(cand)) if len(cand) else int(sup[-1])
        return sup, q
    # beyond: supports up to a pivot, the query past it (mirrored half the time)
    flip = rng.random() < 0.5
    order = slices[::-1] if flip else slices
    k = int(rng.integers(max(1, len(order) // 3), len(order)))
    pivot = int(order[k - 1])
    span = order[:k]
    sup = np.unique(span[np.round(np.linspace(0, len(span) - 1, n)).astype(int)])
    step = -1 if flip else 1
    q = int(np.clip(pivot + step * int(rng.integers(1, 21)), 0, depth - 1))
    if q in sup:
        q = int(np.clip(pivot + step, 0, depth - 1))
    return np.sort(sup), q
