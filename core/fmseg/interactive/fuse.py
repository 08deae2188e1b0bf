"""Propagation along two or three axes, fused: a leak along one axis rarely repeats on another.

The user prompts one slice along ``axis``; :func:`propagate_axes_iter` first propagates along
that axis (:meth:`Session.propagate_iter`, which keeps the user's corrected slices). Every other
axis asked for gets a seed from that first result: its slice along the other axis holding the
most object voxels, prompted with the box of the first result on that slice (restricted to
components touching it), and is propagated the same way. The 3D results are fused voxel by
voxel (:data:`RULES`); slices the user prompted along ``axis`` keep the first result.

Which rule and axes help is measured in ``benchmarks/bench_propagation.py``
(``docs/accuracy.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..progress import Progress, Work
from .prompts import Box, Prompts
from .propagation import PropagationResult, PropagationSettings, keep_connected, propagate_iter

if TYPE_CHECKING:
    from .session import Session

#: Fusion rules: ``vote`` = a voxel is kept when more than half of the axes hold it (with
#: two axes: both), ``and`` = every axis, ``or`` = any axis.
RULES = ("vote", "and", "or")
#: Default rule: the only one that did not lose Dice on the 64-slice sample (liver filling the
#: field, under-segmented by every axis: union 0.754 vs single axis 0.716, vote 0.552, and
#: 0.245; ``docs/accuracy.md``). Vote is meant for leaks (an object that grows on one axis).
DEFAULT_RULE = "or"


@dataclass
class FusionResult:
    """What each axis did and how the results were fused.

    Attributes:
        results: Propagation result per axis (the prompted axis first); an axis whose seed
            came out empty is missing.
        voxels: Object voxels per axis before fusion.
        rule: The fusion rule used.
        fused: Object voxels after fusion.
        masks: Each axis's 3D object before fusion (only with ``keep_masks``).
    """

    results: dict[int, PropagationResult] = field(default_factory=dict)
    voxels: dict[int, int] = field(default_factory=dict)
    rule: str = DEFAULT_RULE
    fused: int = 0
    masks: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """One line: where each axis stopped."""
        return " | ".join(f"axis {a}: {r.reason}" for a, r in self.results.items())


def parse_axes(text: str | Sequence[int], axis: int) -> tuple[int, ...]:
    """Axes to propagate along, the prompted ``axis`` first (``"0,1,2"`` or a sequence).

    Raises:
        ValueError: An axis outside 0..2, or a list without the prompted axis.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        axes = tuple(dict.fromkeys(int(a) for a in items if str(a).strip() != ""))
    except ValueError:
        axes = ()
    if not axes or any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"axes must be numbers 0, 1 or 2 separated by commas, got {text!r}")
    if axis not in axes:
        raise ValueError(f"the axes {text!r} must include the prompted axis {axis}")
    return (axis, *(a for a in axes if a != axis))


def fuse_masks(masks: Sequence[np.ndarray], rule: str = "vote") -> np.ndarray:
    """Fuse boolean volumes of the same shape voxel by voxel (see :data:`RULES`)."""
    if rule not in RULES:
        raise ValueError(f"fusion rule must be one of {', '.join(RULES)}, got {rule!r}")
    count = np.sum(np.stack([np.asarray(m, bool) for m in masks]), axis=0)
    if rule == "and":
        return count == len(masks)
    if rule == "or":
        return count > 0
    return 2 * count > len(masks)


def seed_slice(mask: np.ndarray, axis: int) -> int:
    """Slice along ``axis`` holding the most voxels of ``mask``."""
    other = tuple(a for a in range(mask.ndim) if a != axis)
    return int(np.argmax(mask.sum(axis=other)))


def propagate_axes_iter(
    session: Session,
    axis: int,
    index: int,
    axes: Sequence[int] | None = None,
    settings: PropagationSettings | None = None,
    rule: str = DEFAULT_RULE,
    keep_masks: bool = False,
) -> Work[FusionResult]:
    """Propagate the working mask of slice ``index`` along ``axes`` and fuse into the mask.

    Args:
        session: Holds the seed mask on slice ``index`` along ``axis`` (e.g. after a box).
        axis: The prompted axis (propagated first).
        index: The prompted slice.
        axes: Axes to propagate along, e.g. ``(2, 0, 1)``; None or ``(axis,)``: that axis
            alone (plain :meth:`Session.propagate_iter`).
        settings: Stopping rules for every axis.
        rule: Fusion rule (:data:`RULES`).
        keep_masks: Also return each axis's object (:attr:`FusionResult.masks`; benchmarks
            compare the rules on one propagation).

    Yields:
        :class:`~fmseg.progress.Progress` per slice (all axes together).

    Returns:
        :class:`FusionResult`; :attr:`Session.mask` holds the fused object.
    """
    axes = parse_axes(axes if axes is not None else (axis,), axis)
    if rule not in RULES:
        raise ValueError(f"fusion rule must be one of {', '.join(RULES)}, got {rule!r}")
    cfg = settings or PropagationSettings()
    total = sum(session.n_slices(a) for a in axes)
    out = FusionResult(rule=rule)
    offset = 0
    first = yield from _offset(session.propagate_iter(axis, index, cfg), offset, total)
    out.results[axis] = first
    primary = session.mask.copy()
    out.voxels[axis] = int(primary.sum())
    masks = [primary]
    for b in axes[1:]:
        offset += session.n_slices(axes[axes.index(b) - 1])
        found = yield from _offset(_along(session, primary, b, cfg), offset, total)
        if found is not None:
            result, mask = found
            out.results[b], out.voxels[b] = result, int(mask.sum())
            masks.append(mask)
    if keep_masks:
        out.masks = dict(zip(out.results, masks, strict=True))  # results: axes in order
    fused = fuse_masks(masks, rule) if len(masks) > 1 else primary
    for (a, i), p in session.prompts.items():
        if a == axis and not p.empty:  # the user's slices keep what they prompted
            _put(fused, axis, i, np.take(primary, i, axis=axis))
    session.mask[...] = fused
    out.fused = int(fused.sum())
    yield Progress(total, total, f"fused {len(masks)} axes ({rule}): {out.fused} voxels")
    return out


def _along(
    session: Session, primary: np.ndarray, b: int, cfg: PropagationSettings
) -> Work[tuple[PropagationResult, np.ndarray] | None]:
    """Seed axis ``b`` from the first axis's result and propagate along it (own mask)."""
    seed = seed_slice(primary, b)
    ref = np.take(primary, seed, axis=b)
    if not ref.any():
        return None

    def segment(i: int, box: Box) -> np.ndarray:
        return session.predictor.predict(session.embedding(b, i), Prompts(box=box)).mask()

    stack = np.zeros(np.moveaxis(primary, b, 0).shape, bool)
    stack[seed] = keep_connected(segment(seed, Box.from_mask(ref, cfg.margin)), ref, cfg.reach)
    if stack[seed].sum() < cfg.min_area:
        return None
    result = yield from propagate_iter(stack, seed, segment, (), cfg)
    return result, np.moveaxis(stack, 0, b)


def _offset(work: Work, offset: int, total: int) -> Work:
    """Re-number a sub-generator's progress as part of ``total`` steps."""
    try:
        while True:
            p = next(work)
            yield Progress(min(offset + p.done, total), total, p.message)
    except StopIteration as stop:
        return stop.value


def _put(target: np.ndarray, axis: int, index: int, value: np.ndarray) -> None:
    idx = [slice(None)] * target.ndim
    idx[axis] = index
    target[tuple(idx)] = value
