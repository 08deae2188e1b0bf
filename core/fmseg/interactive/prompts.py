"""Prompt types in slice pixel coordinates (x = column, y = row), as small frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class PromptError(ValueError):
    """A prompt that cannot be used on the given image (outside it, degenerate, ...)."""


@dataclass(frozen=True)
class Point:
    """A click. ``positive`` marks the object, otherwise background."""

    x: float
    y: float
    positive: bool = True


@dataclass(frozen=True)
class Box:
    """An axis-aligned box ``[x0, x1] x [y0, y1]`` in pixels (inclusive corners)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def normalised(self) -> Box:
        """The same box with ``x0 <= x1`` and ``y0 <= y1``."""
        return Box(
            min(self.x0, self.x1),
            min(self.y0, self.y1),
            max(self.x0, self.x1),
            max(self.y0, self.y1),
        )

    @classmethod
    def from_mask(cls, mask: np.ndarray, margin: float = 0.0) -> Box:
        """Tight box around a ``(H, W)`` mask, grown by ``margin`` pixels and clipped."""
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            raise PromptError("cannot make a box from an empty mask")
        h, w = mask.shape
        return cls(
            max(cols.min() - margin, 0),
            max(rows.min() - margin, 0),
            min(cols.max() + margin, w - 1),
            min(rows.max() + margin, h - 1),
        )


@dataclass(frozen=True)
class Prompts:
    """Everything placed on one slice: at most one box, one lasso and any number of points.

    ``lasso`` holds the ``(x, y)`` vertices of a closed polygon drawn around the object
    (scribbles become points: :func:`fmseg.interactive.scribbles.scribble_points`).
    """

    points: tuple[Point, ...] = field(default_factory=tuple)
    box: Box | None = None
    lasso: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", tuple(self.points))
        if self.lasso is not None:
            lasso = tuple((float(x), float(y)) for x, y in self.lasso)
            object.__setattr__(self, "lasso", lasso)

    @property
    def empty(self) -> bool:
        """True when there is nothing to segment from."""
        return self.box is None and not self.points and self.lasso is None

    def with_point(self, point: Point) -> Prompts:
        """A copy with one more point."""
        return Prompts(self.points + (point,), self.box, self.lasso)

    def with_points(self, points: tuple[Point, ...]) -> Prompts:
        """A copy with more points (e.g. a scribble's)."""
        return Prompts(self.points + tuple(points), self.box, self.lasso)

    def with_box(self, box: Box | None) -> Prompts:
        """A copy with the box replaced."""
        return Prompts(self.points, box, self.lasso)

    def with_lasso(self, vertices) -> Prompts:
        """A copy with the lasso replaced (``(V, 2)`` ``(x, y)`` vertices, or None)."""
        return Prompts(self.points, self.box, vertices)

    def validate(self, shape: tuple[int, int]) -> None:
        """Raise :class:`PromptError` when a prompt lies outside an ``(H, W)`` image."""
        h, w = shape
        for p in self.points:
            if not (0 <= p.x <= w - 1 and 0 <= p.y <= h - 1):
                raise PromptError(f"point (x={p.x:.1f}, y={p.y:.1f}) is outside the {w}x{h} image")
        if self.box is not None:
            b = self.box.normalised()
            if b.x1 < 0 or b.y1 < 0 or b.x0 > w - 1 or b.y0 > h - 1:
                raise PromptError(f"box {b} does not overlap the {w}x{h} image")
            if b.x1 - b.x0 < 1 or b.y1 - b.y0 < 1:
                raise PromptError(f"box {b} is smaller than one pixel")
        if self.lasso is not None:
            if len(self.lasso) < 3:
                raise PromptError(f"a lasso needs at least 3 vertices, got {len(self.lasso)}")
            xs, ys = zip(*self.lasso, strict=True)
            if max(xs) < 0 or max(ys) < 0 or min(xs) > w - 1 or min(ys) > h - 1:
                raise PromptError(f"the lasso does not overlap the {w}x{h} image")
