"""Episodes for in-context trainers, drawn from the corpus.

A *task* is one structure of one record along one array axis (or, across subjects, the same
named structure in two subjects along the same anatomical axis); an *episode* is ``S`` support
slices and one query slice of it, resized to ``(128, 128)`` with intensities in [0, 1]. Kinds
of episode (shares in :class:`Mix`):

* ``real``: a record's real image (CT window or volume percentiles);
* ``synth``: a SynthSeg-style image of the record's label map (:mod:`fmseg.training.synth`),
  one random contrast per task; label-only records (Desikan-Killiany brains) are always this;
* ``shapes``: a random-shape label map with a random contrast (UniverSeg-style synthetic task).

Task augmentation drawn here: merging a structure with 1-2 touching labels, and splitting it
by a random straight line through its centre (the same line on every slice of the task);
``cross`` draws the supports from one subject and the query from another. Flips, rotations and
intensity changes are applied by the trainer to the whole episode. Only the training split of
:mod:`fmseg.training.splits` is used unless ``split="heldout"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..incontext.support import normalise
from .incontext_data import SIZE, resize_stack
from .record import Record
from .splits import is_held_out_subject
from .synth import draw_appearance, random_label_map, synthesize

MIN_AREA = 8  # pixels (at 128x128) for a slice to hold the structure


@dataclass(frozen=True)
class Mix:
    """Shares of episode kinds and task augmentations (each a probability)."""

    real: float = 0.45
    synth: float = 0.35
    shapes: float = 0.2
    cross: float = 0.2
    merge: float = 0.15
    split: float = 0.1
    empty: float = 0.1


@dataclass
class Stack:
    """One record along one axis at ``SIZE``: images ``(N, S, S)`` or None, labels int16."""

    record: Record
    axis: int
    images: torch.Tensor | None
    labels: torch.Tensor
    counts: np.ndarray  # (N, L) pixels of each label value in each slice

    def area(self, values) -> np.ndarray:
        """``(N,)`` pixels of the union of ``values`` in each slice."""
        return self.counts[:, [v for v in values if v < self.counts.shape[1]]].sum(1)


@dataclass(frozen=True)
class Structure:
    """A target: label ``values`` of ``stacks[stack]``, present on ``slices``."""

    key: str
    stack: int
    values: tuple[int, ...]
    slices: np.ndarray


def resize(stack: np.ndarray, labels: bool) -> torch.Tensor:
    """``(N, H, W)`` -> ``(N, SIZE, SIZE)``: int16 labels, or images clamped to [0, 1]."""
    if labels:
        return resize_stack(stack, "nearest").to(torch.int16)
    return resize_stack(stack, "bilinear").clamp(0, 1)  # antialiasing overshoots a little


def axes_of(record: Record) -> tuple[int, ...]:
    """Axes that make sense for slicing (tiles of a 2D image: only their stacking axis)."""
    return (2,) if record.orientation == "tiles" else (0, 1, 2)


def crop_to_split(record: Record, split: str) -> tuple[np.ndarray | None, np.ndarray]:
    """Image and labels, cut to the training part when ``record.eval_region`` is set."""
    img, lab = record.image, record.labels
    if record.eval_region is None:
        return img, lab
    axis, start = record.eval_region
    keep = slice(0, start) if split == "train" else slice(start, None)
    idx = [slice(None)] * 3
    idx[axis] = keep
    return (None if img is None else img[tuple(idx)]), lab[tuple(idx)]


def slice_counts(labels: torch.Tensor) -> np.ndarray:
    """``(N, L)`` number of pixels of each label value in each slice."""
    lab = labels.numpy().astype(np.int64).reshape(len(labels), -1)
    n_lab = int(lab.max()) + 1
    flat = lab + n_lab * np.arange(len(lab))[:, None]
    return np.bincount(flat.ravel(), minlength=n_lab * len(lab)).reshape(len(lab), n_lab)


class EpisodeSampler:
    """Draws episodes from corpus records.

    Args:
        records: Corpus records (e.g. :func:`fmseg.training.corpus.load_corpus`).
        split: ``"train"``: no held-out subject, region or structure. ``"heldout"``: only
            held-out subjects and regions (for validation).
        mix: Shares of episode kinds and augmentations.
        weights: Per-subject sampling weight (default 1: every subject weighs alike, spread
            over its records, axes and structures).
    """

    def __init__(self, records: list[Record], split: str = "train", mix: Mix = Mix(), weights=None):
        self.mix = mix
        self.split = split
        self.stacks: list[Stack] = []
        self.structures: list[Structure] = []
        keep = [
            r
            for r in records
            if is_held_out_subject(r.subject) == (split == "heldout")
            or (split == "heldout" and r.eval_region is not None)
        ]
        images: dict[tuple, np.ndarray] = {}
        for rec in keep:
            img, lab = crop_to_split(rec, split)
            if img is not None:
                key = (rec.subject, img.shape, rec.window, float(img.mean()))
                if key not in images:
                    images[key] = normalise(img, rec.window)
                img = images[key]
            for axis in axes_of(rec):
                self._add_stack(rec, axis, img, lab)
        self.weights = weights or {}
        self._index()

    def _add_stack(self, rec: Record, axis: int, img, lab) -> None:
        labels = resize(np.moveaxis(lab, axis, 0), labels=True)
        images = None if img is None else resize(np.moveaxis(img, axis, 0), labels=False)
        counts = slice_counts(labels)
        s = len(self.stacks)
        stack = Stack(rec, axis, images, labels, counts)
        self.stacks.append(stack)
        targets = {rec.names[v]: (v,) for v in rec.names if v not in rec.excluded}
        targets.update({k: vs for k, vs in rec.unions.items() if not set(vs) & set(rec.excluded)})
        for key, values in targets.items():
            slices = np.flatnonzero(stack.area(values) >= MIN_AREA)
            if len(slices) >= 2:
                self.structures.append(Structure(key, s, values, slices))

    def _index(self) -> None:
        """Sampling tables: per kind, structure probabilities; cross-subject partners."""
        self.by_kind: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for kind in ("real", "synth"):
            idx, w = [], []
            for i, st in enumerate(self.structures):
                stack = self.stacks[st.stack]
                if kind == "real" and stack.images is None:
                    continue
                idx.append(i)
                w.append(self.weights.get(stack.record.subject, 1.0))
            if idx:
                w = np.asarray(w, float)
                # every subject (and each of its records and axes) weighs alike
                groups = [(self.stacks[self.structures[i].stack].record.subject) for i in idx]
                per = {g: groups.count(g) for g in set(groups)}
                w = w / np.array([per[g] for g in groups])
                if w.sum() > 0:
                    self.by_kind[kind] = (np.asarray(idx), w / w.sum())
        self.partners: dict[tuple[str, int], list[int]] = {}
        for i, st in enumerate(self.structures):
            rec = self.stacks[st.stack].record
            if rec.orientation == "RAS":
                self.partners.setdefault((st.key, self.stacks[st.stack].axis), []).append(i)

    # --- drawing ------------------------------------------------------------------------------

    def episode(self, n_support: int, rng: np.random.Generator):
        """``(S, 1, H, W)`` support images and masks, ``(1, H, W)`` query image and mask."""
        kinds = [k for k in ("real", "synth") if k in self.by_kind] + ["shapes"]
        p = np.array([getattr(self.mix, k) for k in kinds], float)
        kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        if kind == "shapes":
            return self._shapes(n_support, rng, gen)
        idx, w = self.by_kind[kind]
        st = self.structures[int(rng.choice(idx, p=w))]
        partner = self.partner(st, kind, rng) if rng.random() < self.mix.cross else None
        st, values, angle = self.augment_target(st, rng)
        qry_st = partner if partner is not None else st
        sup = self._pick(st.slices, n_support + (partner is None), rng)
        if partner is None:
            sup, q = sup[:-1], sup[-1:]
            q = self._maybe_empty(st, q, rng)
        else:
            q = self._pick(partner.slices, 1, rng)
        s_img, s_lab, appearance = self.slices(st, sup, kind, gen, None)
        q_img, q_lab, _ = self.slices(qry_st, q, kind, gen, appearance)  # same contrast
        s_mask, centre = split_target(s_lab, values, angle, None)
        q_mask, _ = split_target(q_lab, qry_st.values if partner else values, angle, centre)
        return s_img[:, None], s_mask[:, None], q_img, q_mask

    def _pick(self, pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(pool, size=n, replace=len(pool) < n)

    def partner(self, st: Structure, kind: str, rng) -> Structure | None:
        """The same named structure in another subject (same axis), or None."""
        stack = self.stacks[st.stack]
        subj = stack.record.subject
        cands = [
            j
            for j in self.partners.get((st.key, stack.axis), [])
            if self.stacks[self.structures[j].stack].record.subject != subj
            and (kind == "synth" or self.stacks[self.structures[j].stack].images is not None)
        ]
        return self.structures[int(rng.choice(cands))] if cands else None

    def _maybe_empty(self, st: Structure, q: np.ndarray, rng) -> np.ndarray:
        """With probability ``empty``, a slice next to the structure where it is absent."""
        if rng.random() >= self.mix.empty:
            return q
        area = self.stacks[st.stack].area(st.values)
        lo, hi = st.slices.min(), st.slices.max()
        near = np.arange(max(0, lo - 3), min(len(area), hi + 4))
        near = near[area[near] == 0]
        return q if len(near) == 0 else near[int(rng.integers(len(near)))][None]

    def augment_target(self, st: Structure, rng):
        """``(structure, values, split angle or None)`` after the task augmentations.

        Merges with 1-2 touching labels (p ``merge``) and draws the angle of a splitting line
        (p ``split``; applied by :func:`split_target`).
        """
        values = st.values
        stack = self.stacks[st.stack]
        if rng.random() < self.mix.merge:
            mid = int(st.slices[len(st.slices) // 2])
            lab = stack.labels[mid].numpy()
            ring = ndimage.binary_dilation(np.isin(lab, values), iterations=2)
            near = set(np.unique(lab[ring]).tolist()) - set(values) - {0}
            near -= set(stack.record.excluded)
            if near:
                extra = rng.choice(
                    sorted(near), size=min(len(near), int(rng.integers(1, 3))), replace=False
                )
                values = tuple(values) + tuple(int(v) for v in extra)
                slices = np.flatnonzero(stack.area(values) >= MIN_AREA)
                st = Structure(st.key + "+merge", st.stack, values, slices)
        angle = float(rng.uniform(0, np.pi)) if rng.random() < self.mix.split else None
        return st, values, angle

    def slices(self, st: Structure, idx, kind, gen, appearance):
        """``(images, labels, appearance)`` of slices ``idx``.

        Real images (appearance None), or synthesised with ``appearance`` (a new one if None).
        """
        stack = self.stacks[st.stack]
        lab = stack.labels[torch.as_tensor(np.asarray(idx))]
        if kind == "real":
            return stack.images[torch.as_tensor(np.asarray(idx))], lab, None
        if appearance is None:
            n_lab = int(stack.counts.shape[1])
            appearance = draw_appearance(
                n_lab, np.random.default_rng(int(torch.randint(2**31, (1,), generator=gen)))
            )
        img, lab = synthesize(lab, appearance, gen, warp=True)
        return img, lab, appearance

    def _shapes(self, n_support: int, rng, gen):
        n_lab = int(rng.integers(3, 9))
        for _ in range(10):
            lab = random_label_map((n_support + 1, SIZE, SIZE), n_lab, gen)
            target = int(rng.integers(0, n_lab))
            mask = (lab == target).float()
            if (mask.flatten(1).sum(1) >= MIN_AREA).all():
                break
        img, lab = synthesize(lab, draw_appearance(n_lab, rng), gen, warp=False)
        mask = (lab == target).float()
        return img[:-1, None], mask[:-1, None], img[-1:], mask[-1:]


def split_target(lab: torch.Tensor, values, angle: float | None, centre: float | None):
    """``(mask, centre)``: the union of ``values`` in ``(N, H, W)`` labels, cut by a line.

    With an ``angle``, only the side of the line through ``centre`` (the mask's centre along
    the line's normal when None, returned so the query is cut by the supports' line) is kept.
    """
    mask = torch.isin(lab.long(), torch.as_tensor(values, dtype=torch.long)).float()
    if angle is None or mask.sum() == 0:
        return mask, centre
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    proj = np.cos(angle) * xx + np.sin(angle) * yy
    if centre is None:
        centre = float((proj * mask).sum() / mask.sum())
    return mask * (proj[None] >= centre).float(), centre
