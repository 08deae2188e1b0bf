"""Which slice to annotate next: rank the unannotated slices of a volume by expected benefit.

For one structure (label value) along one axis, each unannotated slice gets a score from three
parts, all computed from the support set and the volume (no ground truth):

* **disagreement**: candidate segmentations of the slice disagree
  (:func:`fmseg.uncertainty.mutual_information`, summed over the slice: px·bit). The default
  candidates are *leave-one-annotation-out*: the backend run once with every support, and once
  per annotated slice of this volume without it. Dropping annotation ``a_i`` changes the
  result only between its neighbours ``a_{i-1}`` and ``a_{i+1}`` (beyond the last one: up to
  the volume's end), so only those slices are segmented again. This works for ``interpolation``
  (fill-between) and for ``auto`` alike; a sampler (``tyche-small``, ``<backend>+tta``) can
  supply the candidates instead.
* **distance** in slices to the nearest annotation, or to the nearest predicted end of the
  structure (where it is absent: annotating beyond it brings nothing, so an end acts as an
  annotation of "nothing here").
* **extent**: the structure's predicted extent along the axis (the slices where the prediction
  from every support has foreground). Backends that copy the end masks beyond the annotated
  range (``interpolation``, ``nearest``) predict no end; for them each end is extrapolated from
  the two outermost annotations (:func:`extrapolated_end`). Slices outside the
  extent (plus :data:`MARGIN`) keep only :data:`OUTSIDE` of their score.

``score = extent factor x (D / max D) ** weight x (distance / max distance) ** (1 - weight)``
(maxima over the slices inside the extent): ``weight = 1`` ranks by disagreement only,
``weight = 0`` bisects the largest gap. A product, not a sum: leaving an annotation out changes
its neighbouring slices most, so disagreement alone keeps pointing next to annotations.
``docs/suggest.md`` gives the benchmark that chose :data:`WEIGHT`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..progress import Progress, Work
from ..uncertainty import mutual_information
from ..window import WindowLike, intensity_window
from .backends import Backend
from .correct import pick_label
from .segment import segment_slices_iter, segment_volume_iter, volume_queries, volume_source
from .stochastic import AugmentedSampler, TycheBackend, sample_slices_iter
from .support import SupportSet

WEIGHT = 0.5  # share of disagreement in the score (the rest: distance)
MARGIN = 1  # slices beyond the predicted extent that still count as inside
OUTSIDE = 0.05  # score factor of slices outside the predicted extent
MAX_CANDIDATES = 8  # leave-one-out candidates at most (annotations dropped)
PRESENT = 0.05  # a slice holds the structure above this fraction of the median annotated area
COPIES_ENDS = ("interpolation", "nearest")  # backends that predict no end of the structure


@dataclass(frozen=True)
class Suggestion:
    """One candidate slice and why it ranks where it does.

    Attributes:
        index: Slice index along the axis.
        score: Expected benefit (higher is better), in [0, 1].
        disagreement: Candidate disagreement summed over the slice (px·bit).
        distance: Slices to the nearest annotation or predicted end.
        inside: Whether the slice lies in the predicted extent (plus the margin).
        reason: One line for the clinician.
    """

    index: int
    score: float
    disagreement: float
    distance: int
    inside: bool
    reason: str


@dataclass(frozen=True)
class Suggestions:
    """The ranking and what it was computed from.

    Attributes:
        ranked: Unannotated slices, best first.
        axis: Slicing axis.
        label: Label value ranked for.
        annotated: Annotated slice indices of this volume and axis.
        extent: Predicted ``(first, last)`` slice of the structure.
        probs: ``(D, H, W)`` probabilities from every support (the current result).
        candidates: Number of candidate segmentations behind the disagreement.
    """

    ranked: list[Suggestion]
    axis: int
    label: int
    annotated: list[int]
    extent: tuple[int, int]
    probs: np.ndarray
    candidates: int

    @property
    def best(self) -> Suggestion | None:
        """The slice to annotate next (None when every slice is annotated)."""
        return self.ranked[0] if self.ranked else None


def annotated_slices(support: SupportSet, source: str, axis: int, label: int) -> dict[int, int]:
    """Annotated slice index -> its example number, for one volume, axis and label."""
    out = {}
    for n, e in enumerate(support.examples):
        if e.source == source and e.axis == axis and e.index >= 0 and np.any(e.labels == label):
            out[e.index] = n
    return out


def extrapolated_end(indices: list[int], areas: list[float], toward: int, size: int) -> int:
    """Predicted last slice of the structure beyond the outermost annotation (model-free).

    Conservative on purpose: a slice suggested beyond the real end is wasted (an empty slice
    cannot be a support), one suggested short of it is still inside the structure, and the
    estimate moves outward once it is annotated. The extension is the gap between the two
    outermost annotations at that end, shortened where their radii ``sqrt(area)`` shrink
    toward it (extended linearly to zero); a single annotation gives its radius in pixels.
    Always at least one slice.

    Args:
        indices: Sorted annotated slice indices.
        areas: Their foreground areas (pixels).
        toward: +1 for the end after the last annotation, -1 for the one before the first.
        size: Number of slices along the axis.
    """
    order = indices if toward > 0 else indices[::-1]
    radii = [float(np.sqrt(a)) for a in (areas if toward > 0 else areas[::-1])]
    length = radii[-1]
    if len(order) > 1:
        length = float(abs(order[-1] - order[-2]))
        slope = (radii[-1] - radii[-2]) / length
        if slope < 0:
            length = min(length, radii[-1] / -slope)
    step = max(1, int(round(length)))
    return int(np.clip(order[-1] + toward * step, 0, size - 1))


def predicted_extent(
    area: np.ndarray, annotated: dict[int, float], copies_ends: bool
) -> tuple[int, int]:
    """``(first, last)`` slice of the structure along the axis.

    Args:
        area: ``(D,)`` predicted foreground pixels per slice (annotated ones: their mask's).
        annotated: Annotated slice index -> its area.
        copies_ends: The backend copies the end masks (its prediction has no end).
    """
    size = len(area)
    idx = sorted(annotated)
    if copies_ends and idx:
        areas = [annotated[i] for i in idx]
        return extrapolated_end(idx, areas, -1, size), extrapolated_end(idx, areas, 1, size)
    ref = np.median(list(annotated.values())) if annotated else float(area.max())
    present = area >= max(4.0, PRESENT * ref)
    if not present.any():
        return (idx[0], idx[-1]) if idx else (0, size - 1)
    lo, hi = (idx[0], idx[-1]) if idx else (int(np.argmax(present)), int(np.argmax(present)))
    while lo > 0 and present[max(0, lo - 1 - MARGIN) : lo].any():  # step over small holes
        lo -= 1
    while hi < size - 1 and present[hi + 1 : hi + 2 + MARGIN].any():
        hi += 1
    return lo, hi


def _reason(d: float, dist: int, near: str, inside: bool, top_d: bool, top_g: bool) -> str:
    what = "largest disagreement" if top_d else "disagreement"
    where = f"{dist} slice{'s' if dist != 1 else ''} from the nearest {near}"
    if not inside:
        return f"outside the predicted extent; {what} {d:.0f} px·bit, {where}"
    if top_g and not top_d:
        return f"middle of the largest gap: {where}; {what} {d:.0f} px·bit"
    return f"{what} ({d:.0f} px·bit), {where}"


def rank(
    disagreement: np.ndarray,
    annotated: list[int],
    extent: tuple[int, int],
    weight: float = WEIGHT,
    margin: int = MARGIN,
) -> list[Suggestion]:
    """Score and sort the unannotated slices (pure function of the parts).

    Args:
        disagreement: ``(D,)`` px·bit per slice.
        annotated: Annotated slice indices.
        extent: Predicted ``(first, last)`` slice.
        weight: Share of disagreement in the score, in [0, 1].
        margin: Slices beyond the extent still counted as inside.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    size, (lo, hi) = len(disagreement), extent
    ends = [lo - 1 - margin, hi + 1 + margin]  # "nothing here" just beyond the predicted ends
    todo = [z for z in range(size) if z not in set(annotated)]
    if not todo:
        return []
    dist, near = [], []
    for z in todo:
        da = min((abs(z - a) for a in annotated), default=size)
        de = min(abs(z - e) for e in ends)
        dist.append(min(da, de))
        near.append("annotation" if da <= de else "predicted end")
    g = np.asarray(dist, float)
    d = disagreement[todo].astype(float)
    inside = np.array([lo - margin <= z <= hi + margin for z in todo])
    ref = inside if inside.any() else np.ones_like(inside)  # normalise over the inside
    dn = np.clip(d / d[ref].max(), 0, 1) if d[ref].max() > 0 else np.ones_like(d)  # no say
    gn = np.clip(g / g[ref].max(), 0, 1) if g[ref].max() > 0 else np.zeros_like(g)
    score = np.where(inside, 1.0, OUTSIDE) * dn**weight * gn ** (1 - weight)
    order = sorted(range(len(todo)), key=lambda k: (-score[k], todo[k]))
    top_d, top_g = d[ref].max(), g[ref].max()
    return [
        Suggestion(
            todo[k],
            round(float(score[k]), 6),
            round(float(d[k]), 3),
            int(dist[k]),
            bool(inside[k]),
            _reason(d[k], dist[k], near[k], bool(inside[k]), d[k] == top_d > 0, g[k] == top_g),
        )  # fmt: skip
        for k in order
    ]


def _dropped(annotated: list[int], n: int, seed: int) -> list[int]:
    """Which annotations the leave-one-out candidates drop (all, or ``n`` drawn with ``seed``)."""
    if len(annotated) <= n:
        return list(annotated)
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(annotated, n, replace=False))


def _affected(annotated: list[int], a: int, size: int) -> list[int]:
    """Slices whose result changes when annotation ``a`` is dropped (between its neighbours)."""
    before = [i for i in annotated if i < a]
    after = [i for i in annotated if i > a]
    lo = before[-1] + 1 if before else 0
    hi = after[0] - 1 if after else size - 1
    others = set(annotated) - {a}
    return [z for z in range(lo, hi + 1) if z not in others]


def suggest_slices_iter(
    backend: Backend,
    support: SupportSet,
    volume: np.ndarray,
    axis: int = 0,
    window: WindowLike = None,
    label: int | None = None,
    source: str | None = None,
    weight: float = WEIGHT,
    sampler: TycheBackend | AugmentedSampler | None = None,
    max_candidates: int = MAX_CANDIDATES,
    seed: int = 0,
    batch: int = 8,
) -> Work[Suggestions]:
    """Rank the unannotated slices of ``volume`` along ``axis`` (see the module docstring).

    Args:
        backend: The backend whose result the annotations improve (``auto``, ``interpolation``).
        support: The support set (annotated slices of this volume carry its ``source``).
        volume: ``(D, H, W)`` raw intensities.
        axis: Slicing axis.
        window: Intensity window (the one of the supports).
        label: Label value (None: the support set's only one).
        source: Identity of ``volume`` (None: its :func:`volume_source`).
        weight: Share of disagreement in the score (1: disagreement only, 0: distance only).
        sampler: Candidates from this sampler instead of leaving annotations out.
        max_candidates: Most annotations left out (drawn with ``seed`` when there are more).
        seed: Seed of that draw.
        batch: Query slices per backend call.

    Returns:
        (via StopIteration) :class:`Suggestions`.

    Raises:
        ValueError: Empty support set, unknown or ambiguous label, bad volume or axis.
    """
    if not 0.0 <= weight <= 1.0:  # before any work
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    if label is None and len(support.label_values) > 1:
        raise ValueError(f"the support set has labels {support.label_values}: choose one")
    label = pick_label(support, label)
    src = source if source is not None else volume_source(np.asarray(volume))
    volume_queries(volume, axis, window, [0], src)  # checks the volume and axis first
    window = intensity_window(volume, window)  # resolved once, not once per pass
    ann = annotated_slices(support, src, axis, label)
    annotated = sorted(ann)
    yield Progress(0, 0, "segmenting with every support")
    full = yield from segment_volume_iter(
        backend, support, volume, axis, window, [label], batch=batch, source=src
    )
    probs = np.moveaxis(full.probs[label], axis, 0)  # (D, H, W) view
    masks = {i: support.examples[n].labels == label for i, n in ann.items()}
    area = (probs > 0.5).sum((1, 2)).astype(float)
    for i, m in masks.items():
        area[i] = m.sum()
    extent = predicted_extent(area, {i: area[i] for i in annotated}, backend.name in COPIES_ENDS)
    if sampler is not None:
        disagreement, k = yield from _sampled(sampler, support, volume, axis, window, label, src)
    else:
        disagreement, k = yield from _left_out(
            backend,
            support,
            volume,
            axis,
            window,
            label,
            src,
            probs,
            ann,
            max_candidates,
            seed,
            batch,
        )
    ranked = rank(disagreement, annotated, extent, weight)
    return Suggestions(ranked, axis, label, annotated, extent, np.moveaxis(probs, 0, axis), k)


def _left_out(backend, support, volume, axis, window, label, src, probs, ann, n, seed, batch):
    """``(D,)`` px·bit of the leave-one-out candidates, and their number (with the full one)."""
    annotated = sorted(ann)
    drop = _dropped(annotated, n, seed) if len(support) > 1 else []
    size = probs.shape[0]
    replaced: list[tuple[list[int], np.ndarray]] = []
    for j, a in enumerate(drop):
        yield Progress(j, len(drop), f"candidate without slice {a}")
        sub = SupportSet([e for m, e in enumerate(support.examples) if m != ann[a]], support.names)
        if label not in sub.label_values:
            continue
        slices = _affected(annotated, a, size)
        _, _, queries, pos = volume_queries(volume, axis, window, slices, src)
        res = yield from segment_slices_iter(backend, sub, queries, pos, [label], batch)
        replaced.append((slices, res.probs[label]))  # (n, H, W): no whole-volume arrays
    out = np.zeros(size)
    for z in range(size):
        alt = [p[s.index(z)] for s, p in replaced if z in s]
        if alt:
            stack = np.stack([probs[z]] * (len(replaced) + 1 - len(alt)) + alt)
            out[z] = mutual_information(stack).sum()
    return out, len(replaced) + 1


def _sampled(sampler, support, volume, axis, window, label, src, chunk: int = 16):
    """``(D,)`` px·bit of a sampler's candidates (sampled in chunks to bound memory), and K."""
    moved, idx, queries, pos = volume_queries(volume, axis, window, None, src)
    out = np.zeros(moved.shape[0])
    k = 0
    for i in range(0, len(idx), chunk):
        part = yield from sample_slices_iter(
            sampler, support, queries[i : i + chunk], label, pos[i : i + chunk]
        )
        k = len(part)
        out[idx[i : i + chunk]] = mutual_information(part).sum((1, 2))
    return out, k


def suggest_slices(*args, **kwargs) -> list[Suggestion]:
    """:func:`suggest_slices_iter` run to the end; the ranked slices, best first."""
    from ..progress import drain

    return drain(suggest_slices_iter(*args, **kwargs)).ranked
