"""Model-free click refinement: edit a binary mask with one click, pure numpy/scipy.

Used by :class:`~fmseg.interactive.session.Session` for corrective clicks on top of a box, where the
measurements in ``fmseg/weights/litemedsam_points.md`` show that editing the box prediction
with the model's own probabilities beats re-running either decoder. Masks are ``(H, W)``
boolean arrays; clicks are :class:`~fmseg.interactive.prompts.Point` with ``x`` = column,
``y`` = row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .prompts import Point, Prompts

if TYPE_CHECKING:
    from .predictor import Prediction, SamPredictor, SliceEmbedding

_FOUR = ndimage.generate_binary_structure(2, 1)


def interior_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel of ``mask`` ``(H, W)`` to the nearest pixel outside it.

    Pixels beyond the image border count as outside, so regions touching the border still get
    their centre inside.
    """
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected component of a ``(H, W)`` mask (empty mask when none)."""
    lab, n = ndimage.label(mask, structure=_FOUR)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(lab.ravel())[1:]
    return lab == 1 + int(np.argmax(sizes))


def _component_at(mask: np.ndarray, r: int, c: int) -> np.ndarray:
    lab, _ = ndimage.label(mask, structure=_FOUR)
    return lab == lab[r, c] if lab[r, c] else np.zeros_like(mask, dtype=bool)


def _disk(shape: tuple[int, int], r: int, c: int, radius: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - r) ** 2 + (cols - c) ** 2 <= radius**2


def _add_region(
    prob: np.ndarray, mask: np.ndarray, r: int, c: int, low: float, max_growth: float
) -> np.ndarray:
    """Pixels to add for a positive click at ``(r, c)`` outside ``mask``."""
    radius = max(float(ndimage.distance_transform_edt(~mask)[r, c]) if mask.any() else 3.0, 1.5)
    disk = _disk(mask.shape, r, c, radius)
    grow = _component_at(prob > min(low, 0.5 * float(prob[r, c])), r, c)
    if grow.any() and grow.sum() <= max_growth * disk.sum():
        return grow | disk
    return disk


def _remove_region(mask: np.ndarray, r: int, c: int) -> np.ndarray:
    """Pixels to remove for a negative click at ``(r, c)`` inside ``mask``."""
    comp = _component_at(mask, r, c)
    if not largest_component(mask)[r, c]:
        return comp
    return _disk(mask.shape, r, c, max(float(interior_distance(mask)[r, c]), 1.5)) & comp


def refine_with_click(
    prob: np.ndarray, mask: np.ndarray, click: Point, low: float = 0.25, max_growth: float = 8.0
) -> np.ndarray:
    """Edit a binary mask with one click, without running a model.

    A positive click outside the mask adds the largest disk around the click that does not reach
    into the mask, together with the connected region of ``prob > min(low, p / 2)`` containing
    the click (``p``: probability at the click) unless that region is more than ``max_growth``
    times the disk's area (a leak). A negative click inside the mask removes its whole connected
    component when that is not the mask's largest one; otherwise the largest disk around the
    click that stays inside the mask. Clicks that agree with the mask change nothing.

    Args:
        prob: ``(H, W)`` foreground probability of the base prediction (e.g. box-only).
        mask: ``(H, W)`` current binary mask (e.g. ``prob > 0.5`` after earlier clicks).
        click: The click, in the same pixel frame.
        low: Probability above which pixels connected to a positive click are added.
        max_growth: Largest accepted ratio of the grown region's area to the disk's.

    Returns:
        The new ``(H, W)`` boolean mask.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    r = int(np.clip(round(click.y), 0, h - 1))
    c = int(np.clip(round(click.x), 0, w - 1))
    if click.positive and not mask[r, c]:
        return mask | _add_region(prob, mask, r, c, low, max_growth)
    if not click.positive and mask[r, c]:
        return mask & ~_remove_region(mask, r, c)
    return mask.copy()


def refine_with_clicks(
    prob: np.ndarray, mask: np.ndarray, clicks: tuple[Point, ...] | list[Point]
) -> np.ndarray:
    """Apply :func:`refine_with_click` for every click in order; returns the ``(H, W)`` mask."""
    mask = np.asarray(mask, dtype=bool)
    for click in clicks:
        mask = refine_with_click(prob, mask, click)
    return mask


def decode_prompts(
    box_model: SamPredictor,
    click_model: SamPredictor | None,
    emb: SliceEmbedding,
    prompts: Prompts,
    base: np.ndarray | None = None,
) -> tuple[Prediction | None, np.ndarray]:
    """Route one slice's prompts to what measured best; returns the prediction and mask.

    Measured by ``benchmarks/bench_clicks.py`` and ``benchmarks/bench_scribbles.py`` on
    held-out targets:

    * a box: LiteMedSAM, then each click edits its result through its probabilities;
    * else a lasso: the polygon itself (:data:`~fmseg.interactive.scribbles.LASSO_METHOD`), then
      clicks edit it model-free;
    * else a start mask ``base`` (a label, an in-context, adapter or propagated result): clicks
      edit it model-free;
    * else clicks only: the click-trained decoder, one click at a time with the previous
      logits as mask prompt, as it was trained; then every click is enforced model-free on
      its result (a click the decoder ignored still edits the mask; clicks it obeyed change
      nothing). Measured 2026-12-04 (``bench_clicks.py``, ``consistent_trained`` vs
      ``trained``): after 5 clicks held-out subjects 0.576 vs 0.448, held-out structures
      0.743 vs 0.663, liver 0.918 vs 0.905, tumour 0.775 vs 0.739.

    Args:
        box_model: The box predictor.
        click_model: The click predictor (None: ``box_model``).
        emb: The slice's embedding.
        prompts: The slice's prompts (not empty).
        base: ``(H, W)`` start mask of the slice, or None.

    Returns:
        ``(prediction or None when no model ran, (H, W) bool mask)``.
    """
    from .scribbles import lasso_mask

    prompts.validate(emb.frame.shape)  # model-free paths must refuse what a decoder would
    if prompts.box is not None:
        pred = box_model.predict(emb, Prompts(box=prompts.box))
        return pred, refine_with_clicks(pred.prob, pred.mask(), prompts.points)
    if prompts.lasso is not None:
        pred, mask = lasso_mask(box_model, emb, prompts.lasso)
        prob = pred.prob if pred is not None else mask.astype(np.float32)
        return pred, refine_with_clicks(prob, mask, prompts.points)
    if base is not None and base.any():
        return None, refine_with_clicks(base.astype(np.float32), base, prompts.points)
    predictor = click_model or box_model
    pred, logits = None, None
    for k in range(1, len(prompts.points) + 1):
        pred = predictor.predict(emb, Prompts(prompts.points[:k]), mask_input=logits)
        logits = pred.low_res_logits
    return pred, refine_with_clicks(pred.prob, pred.mask(), prompts.points)
