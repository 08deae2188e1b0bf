"""Run an in-context backend on slices or whole volumes: labels, batching, progress."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..interactive.cache import array_digest
from ..progress import Progress, Work
from ..validation import check_slices, check_volume
from ..window import WindowLike, intensity_window
from .backends import Backend, Position, Supports
from .support import SupportSet, normalise


def volume_window(volume: np.ndarray) -> tuple[float, float]:
    """The default window policy resolved on ``volume`` (its 0.5-99.5 percentiles)."""
    return intensity_window(volume, None)


def volume_source(volume: np.ndarray) -> str:
    """Identity of a volume used to match support and query slice positions."""
    return array_digest(np.asarray(volume))


def add_slice(
    support: SupportSet,
    volume: np.ndarray,
    labels: np.ndarray,
    axis: int,
    index: int,
    window: WindowLike = None,
    label: int | None = None,
    source: str | None = None,
) -> None:
    """Add slice ``index`` along ``axis`` of an image/label volume pair to ``support``.

    Only the slice is read and checked (a GUI can call this on a large volume); pass
    ``window`` and ``source`` (:func:`volume_source`, computed once) to avoid whole-volume
    passes.

    Args:
        support: Set to extend.
        volume: ``(D, H, W)`` image.
        labels: Label volume of the same shape.
        axis: Slicing axis.
        index: Slice index along ``axis``.
        window: Intensity window policy or ``(low, high)``, resolved on the whole
            ``volume`` (None: the default policy); use the same one for the queries.
        label: Keep only this label value; None keeps every label.
        source: Identity of ``volume`` (None: its :func:`volume_source`).

    Raises:
        ValueError: Shape mismatch, slice out of range, or the label absent on the slice.
    """
    volume, labels = np.asarray(volume), np.asarray(labels)
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D image volume, got shape {volume.shape}")
    if volume.shape != labels.shape:
        raise ValueError(f"image {volume.shape} and labels {labels.shape} differ in shape")
    check_slices([index], volume.shape, axis)
    img, lab = np.take(volume, index, axis), np.take(labels, index, axis)
    if label is not None:
        if not np.any(lab == label):
            raise ValueError(f"label {label} is absent from slice {index} (axis {axis})")
        lab = (lab == label).astype(np.int32) * label
    win = intensity_window(volume, window)
    src = source if source is not None else volume_source(volume)
    support.add(img, lab, win, src, axis, index)


def volume_queries(
    volume: np.ndarray,
    axis: int,
    window: WindowLike,
    slices: list[int] | None,
    source: str | None,
) -> tuple[np.ndarray, list[int], np.ndarray, list[Position]]:
    """Checked volume with ``axis`` first, query indices, normalised queries, positions.

    Raises:
        ValueError: Not a finite, non-constant 3D volume.
    """
    volume = check_volume(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
    win = intensity_window(volume, window)
    idx = list(range(volume.shape[axis])) if slices is None else sorted(set(slices))
    check_slices(idx, volume.shape, axis)
    moved = np.moveaxis(volume, axis, 0)
    src = source if source is not None else volume_source(volume)
    return moved, idx, normalise(moved[idx], win), [(src, axis, i) for i in idx]


@dataclass(frozen=True)
class InContextResult:
    """Segmentation of a stack of query slices.

    Attributes:
        probs: Label value -> ``(N, H, W)`` float32 probability.
        labels: ``(N, H, W)`` label map: per pixel the most probable label above 0.5.
        paths: For backends that choose a path per query (``auto``): query -> ``"prior"``
            or ``"in-context"`` (keys: query numbers, or slice indices for volumes); else
            None. A query is on the prior path when any label used it.
    """

    probs: dict[int, np.ndarray]
    labels: np.ndarray
    paths: dict[int, str] | None = None

    def path_counts(self) -> dict[str, int]:
        """How many queries took each path (empty when the backend has one path)."""
        out: dict[str, int] = {}
        for p in (self.paths or {}).values():
            out[p] = out.get(p, 0) + 1
        return out


def combine(probs: dict[int, np.ndarray], threshold: float = 0.5) -> np.ndarray:
    """Per pixel the label with the highest probability, where it exceeds ``threshold``."""
    values = sorted(probs)
    stack = np.stack([probs[v] for v in values])
    best = stack.argmax(0)
    out = np.asarray(values, dtype=np.int32)[best]
    out[stack.max(0) <= threshold] = 0
    return out


def binary_supports(support: SupportSet, label: int | None) -> Supports:
    """The supports of one label value (None: any label) with their positions when known."""
    imgs, masks = support.binary(label)
    pos = tuple((e.source, e.axis, e.index) for e in support.examples)
    known = all(p[1] >= 0 for p in pos)
    return Supports(tuple(imgs), tuple(masks), pos if known else None)


def segment_slices_iter(
    backend: Backend,
    support: SupportSet,
    queries: np.ndarray,
    positions: list[Position] | None = None,
    labels: list[int] | None = None,
    batch: int = 8,
) -> Work[InContextResult]:
    """Segment ``(N, H, W)`` query slices already normalised to [0, 1].

    Args:
        backend: Any :class:`~fmseg.incontext.backends.Backend`.
        support: The annotated slices; one pass per label value.
        queries: Normalised query slices.
        positions: ``(source, axis, index)`` per query (needed by interpolation).
        labels: Label values to segment (None: every value in the support set).
        batch: Queries per backend call (progress granularity).

    Raises:
        ValueError: Empty support set, absent label, or queries not ``(N, H, W)``.
    """
    queries = np.asarray(queries, np.float32)
    if queries.ndim != 3:
        raise ValueError(f"queries must be a stack (N, H, W), got shape {queries.shape}")
    values = labels if labels is not None else support.label_values
    if not values:
        raise ValueError("the support set is empty: add at least one annotated slice")
    prepared = {v: backend.prepare(binary_supports(support, v)) for v in values}
    total = len(values) * len(queries)
    probs = {v: np.zeros(queries.shape, np.float32) for v in values}
    paths: dict[int, str] | None = {} if hasattr(backend, "last_paths") else None
    done = 0
    yield Progress(0, total, f"{backend.name}: segmenting")
    for v in values:
        for i in range(0, len(queries), batch):
            pos = positions[i : i + batch] if positions is not None else None
            probs[v][i : i + batch] = backend.predict(prepared[v], queries[i : i + batch], pos)
            if paths is not None:
                for k, p in enumerate(backend.last_paths):
                    if paths.get(i + k) != "prior":
                        paths[i + k] = p
            done += len(queries[i : i + batch])
            yield Progress(
                done, total, f"label {v}: slice {min(i + batch, len(queries))}/{len(queries)}"
            )
    return InContextResult(probs, combine(probs), paths)


def segment_volume_iter(
    backend: Backend,
    support: SupportSet,
    volume: np.ndarray,
    axis: int = 0,
    window: WindowLike = None,
    labels: list[int] | None = None,
    slices: list[int] | None = None,
    batch: int = 8,
    source: str | None = None,
) -> Work[InContextResult]:
    """Segment a volume slice by slice along ``axis``.

    Args:
        backend: Any :class:`~fmseg.incontext.backends.Backend`.
        support: The annotated slices.
        volume: ``(D, H, W)`` raw intensities.
        axis: Slicing axis.
        window: Intensity window policy or ``(low, high)`` (None: the default policy);
            match the supports'.
        labels: Label values to segment (None: all in the support set).
        slices: Indices along ``axis`` to segment (None: all); others stay 0.
        batch: Queries per backend call.
        source: Identity of ``volume`` used to match support positions (None: its
            :func:`volume_source`; pass what was given to :func:`add_slice`).

    Returns:
        (via StopIteration) An :class:`InContextResult` whose arrays have the volume's shape.
    """
    moved, idx, queries, pos = volume_queries(volume, axis, window, slices, source)
    res = yield from segment_slices_iter(backend, support, queries, pos, labels, batch)
    probs = {}
    for v, p in res.probs.items():
        full = np.zeros(moved.shape, np.float32)
        full[idx] = p
        probs[v] = np.moveaxis(full, 0, axis)
    paths = None if res.paths is None else {idx[k]: p for k, p in res.paths.items()}
    return InContextResult(probs, combine(probs), paths)
