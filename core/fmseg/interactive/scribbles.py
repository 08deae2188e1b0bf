"""Scribbles (open paths) and lassos (closed polygons) -> prompts for the slice decoders.

Vertices are ``(V, 2)`` arrays of ``(x, y)`` = (column, row) slice pixels, like
:class:`~fmseg.interactive.prompts.Point`. Which conversion a session uses was decided by
``benchmarks/bench_scribbles.py`` on 60 held-out targets (``benchmarks/results/scribbles.json``,
mean Dice; one centre click 0.653, tight box 0.740):

* a **scribble** becomes :data:`SCRIBBLE_POINTS` clicks evenly spaced along its length, with
  its sign, decoded one at a time like clicks (0.693; 3 clicks 0.679, 8 clicks 0.674, all 5 in
  one decode 0.628);
* a **lasso** becomes the filled polygon itself (0.885; its box through LiteMedSAM 0.751,
  clipped to the polygon 0.770, with the polygon also as mask prompt and clipped 0.854), which
  clicks then edit model-free. The simulated lasso follows the boundary within 1-8 % of the
  object's size; a looser lasso favours the model (:data:`LASSO_METHODS`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from skimage.draw import polygon2mask

from .prompts import Box, Point, PromptError, Prompts

if TYPE_CHECKING:
    from .predictor import Prediction, SamPredictor, SliceEmbedding

#: Clicks a scribble becomes (fewer for paths shorter than that many pixels).
SCRIBBLE_POINTS = 5
#: How a lasso becomes a mask: ``"fill"`` (the polygon), ``"box_clip"`` (LiteMedSAM on its box,
#: clipped to it) or ``"box_mask_clip"`` (box and polygon as mask prompt, clipped).
LASSO_METHODS = ("fill", "box_clip", "box_mask_clip")
LASSO_METHOD = "fill"


def as_vertices(vertices: np.ndarray) -> np.ndarray:
    """``(V, 2)`` float ``(x, y)`` vertices; raises :class:`PromptError` when not finite/2D."""
    v = np.asarray(vertices, dtype=float)
    if v.ndim != 2 or v.shape[1] != 2 or len(v) == 0:
        raise PromptError(f"expected (V, 2) x/y vertices, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise PromptError("a scribble or lasso vertex is not a finite number")
    return v


def path_length(vertices: np.ndarray) -> float:
    """Length in pixels of the open polyline through ``(V, 2)`` vertices."""
    v = as_vertices(vertices)
    return float(np.linalg.norm(np.diff(v, axis=0), axis=1).sum())


def along_path(vertices: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """``(K, 2)`` positions at the given fractions (0 = first vertex, 1 = last) of the length."""
    v = as_vertices(vertices)
    seg = np.linalg.norm(np.diff(v, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    if cum[-1] == 0:
        return np.repeat(v[:1], len(fractions), axis=0)
    at = np.clip(np.asarray(fractions, dtype=float), 0, 1) * cum[-1]
    return np.column_stack([np.interp(at, cum, v[:, 0]), np.interp(at, cum, v[:, 1])])


def scribble_points(
    vertices: np.ndarray, positive: bool = True, n: int = SCRIBBLE_POINTS
) -> tuple[Point, ...]:
    """Clicks evenly spaced along a scribble: the centres of ``n`` equal parts of its length.

    Args:
        vertices: ``(V, 2)`` ``(x, y)`` path vertices in slice pixels.
        positive: True for a scribble on the object, False on the background.
        n: Clicks to make; a path shorter than ``n`` pixels gives one click per pixel (at
            least one).

    Returns:
        The clicks, in path order.
    """
    if n < 1:
        raise ValueError(f"a scribble needs at least one click, got n={n}")
    k = int(min(n, max(1, np.floor(path_length(vertices)))))
    xy = along_path(vertices, (np.arange(k) + 0.5) / k)
    return tuple(Point(float(x), float(y), bool(positive)) for x, y in xy)


def polygon_mask(vertices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` boolean mask of the pixels inside a closed polygon (lasso).

    Raises:
        PromptError: Fewer than three vertices, or no pixel inside the polygon.
    """
    v = as_vertices(vertices)
    if len(v) < 3:
        raise PromptError(f"a lasso needs at least 3 vertices, got {len(v)}")
    mask = polygon2mask(shape, v[:, ::-1])  # skimage wants (row, col)
    if not mask.any():
        raise PromptError("the lasso encloses no pixel of the slice")
    return mask


def lasso_box(vertices: np.ndarray, shape: tuple[int, int]) -> Box:
    """The box prompt of a lasso: the tight box around the pixels it encloses."""
    return Box.from_mask(polygon_mask(vertices, shape))


def clip_to_lasso(mask: np.ndarray, region: np.ndarray) -> np.ndarray:
    """A ``(H, W)`` mask with everything outside the lasso's ``region`` removed."""
    return np.asarray(mask, dtype=bool) & np.asarray(region, dtype=bool)


def lasso_mask(
    box_model: SamPredictor,
    emb: SliceEmbedding,
    vertices: np.ndarray,
    method: str = LASSO_METHOD,
) -> tuple[Prediction | None, np.ndarray]:
    """The ``(H, W)`` mask of a lasso on an embedded slice (see :data:`LASSO_METHODS`).

    Returns:
        ``(prediction or None when no model ran, mask)``.
    """
    region = polygon_mask(vertices, emb.frame.shape)
    if method == "fill":
        return None, region
    if method not in LASSO_METHODS:
        raise ValueError(f"unknown lasso method '{method}', expected one of {LASSO_METHODS}")
    low = None
    if method == "box_mask_clip":
        low = emb.frame.mask_to_model(region, 4 * emb.features.shape[-1])
    pred = box_model.predict(emb, Prompts(box=Box.from_mask(region)), mask_input=low)
    return pred, clip_to_lasso(pred.mask(), region)
