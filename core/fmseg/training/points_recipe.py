"""SAM-style interactive training step and a validation split for the click decoder.

:func:`iterative_step` is the recipe of SAM / micro-sam's interactive training: one prompt
episode per step (a box, clicks, or a box then clicks), several rounds of corrective clicks
simulated on the model's own prediction, the previous round's low-resolution logits fed back
as mask input (detached), and the loss taken at *every* round, so that the first click, every
correction and the box are all trained in the same step. :func:`validate` scores a held-back
part of the training subjects' slices (1 click, 3 clicks, the box) so that a run can be judged
without touching the benchmark's held-out data. Used by :mod:`fmseg.training.train_points`.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional as F

from ..interactive.prompts import Point
from . import clicks as ck

if TYPE_CHECKING:
    from .train_points import Target


def jittered_box(t: Target, rng: np.random.Generator, max_px: float = 5.0) -> np.ndarray:
    """``(4,)`` model-frame box: the target's box, each side moved outwards or in by 0-5 px."""
    b = t.box + rng.uniform(-max_px, max_px, 4) * (rng.random() < 0.8)
    h, w = t.shape
    b = np.clip(b, 0, [w - 1, h - 1, w - 1, h - 1])
    x0, x1 = sorted((b[0], b[2]))
    y0, y1 = sorted((b[1], b[3]))
    sx, sy = t.scale
    return np.array([x0 * sx, y0 * sy, max(x1, x0 + 1) * sx, max(y1, y0 + 1) * sy], np.float32)


def first_clicks(targets: list[Target], rng: np.random.Generator) -> list[list[Point]]:
    """One positive click per target: all at the centre, or (half of the steps) all random.

    The random click is at an interior pixel (:func:`fmseg.training.clicks.random_interior_click`).
    """
    if rng.random() < 0.5:
        return [[ck.random_interior_click(t.gt, rng)] for t in targets]
    return [[ck.first_click(t.gt)] for t in targets]


def points_tensor(clicks: list[list[Point]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample click lists -> ``(B, N, 2)`` xy and ``(B, N)`` labels, padded with -1."""
    n = max(1, max(len(c) for c in clicks))
    xy = torch.zeros(len(clicks), n, 2)
    lab = torch.full((len(clicks), n), -1, dtype=torch.long)
    for i, cl in enumerate(clicks):
        for j, p in enumerate(cl):
            xy[i, j] = torch.tensor([p.x, p.y])
            lab[i, j] = int(p.positive)
    return xy, lab


def predicted_masks(logits: torch.Tensor, targets: list[Target]) -> list[np.ndarray]:
    """``(B, 1, 256, 256)`` logits -> boolean masks with the padding area cleared."""
    out = []
    for lg, t in zip(logits[:, 0].detach().float().cpu().numpy() > 0, targets, strict=True):
        m = np.zeros_like(lg)
        h, w = round(t.shape[0] * t.scale[1]), round(t.shape[1] * t.scale[0])
        m[:h, :w] = lg[:h, :w]
        out.append(m)
    return out


def loss_fn(logits: torch.Tensor, iou_pred: torch.Tensor, gt: torch.Tensor):
    """BCE + soft Dice on ``(B, 1, S, S)`` logits, + MSE of the ``(B, 1)`` IoU head.

    Returns:
        The scalar loss and the ``(B,)`` hard Dice.
    """
    bce = F.binary_cross_entropy_with_logits(logits, gt)
    p = torch.sigmoid(logits).flatten(1)
    g = gt.flatten(1)
    soft = 1 - (2 * (p * g).sum(1) + 1) / (p.sum(1) + g.sum(1) + 1)
    hard = (logits > 0).float().flatten(1)
    inter = (hard * g).sum(1)
    iou = inter / ((hard + g).clamp(max=1).sum(1) + 1e-6)
    dice = 2 * inter / (hard.sum(1) + g.sum(1) + 1e-6)
    return bce + soft.mean() + F.mse_loss(iou_pred[:, 0], iou), dice


def is_validation(key, frac: float) -> bool:
    """Whether a corpus slice key belongs to the validation part (``frac`` of the slices).

    Decided by a hash of ``(record, axis, index)``, so a real slice and its synthetic copy
    always fall on the same side.
    """
    if frac <= 0 or not hasattr(key, "record"):
        return False
    h = zlib.crc32(f"{key.record}/{key.axis}/{key.index}".encode()) % 10_000
    return h < frac * 10_000


def rounds_of(mode: str, k: int) -> int:
    """Decoder rounds of an episode: the box alone, ``k`` clicks, or the box then ``k`` clicks."""
    return {"box": 1, "clicks": k, "box+clicks": k + 1}[mode]


def iterative_step(model, feats, targets, gt, mode: str, k: int, use_mask: bool, rng):
    """Loss of one interactive episode, summed over its rounds.

    Args:
        model: ``SamModel`` (prompt encoder and mask decoder trainable).
        feats: ``(B, C, h, w)`` embeddings on the training device.
        targets: ``B`` :class:`~fmseg.training.train_points.Target`.
        gt: ``(B, 1, 256, 256)`` float ground truth on the device.
        mode: ``"box"``, ``"clicks"`` or ``"box+clicks"``.
        k: Clicks of the episode (0 for ``box``).
        use_mask: Feed the previous round's logits back as mask input.
        rng: Numpy generator.

    Returns:
        ``(loss, dice)``: the mean loss over rounds (with gradients) and the ``(B,)`` hard Dice
        of the last round.
    """
    dev = feats.device
    boxes = None
    if mode != "clicks":
        boxes = torch.from_numpy(np.stack([jittered_box(t, rng) for t in targets])).to(dev)
    if mode == "clicks":
        clicks = first_clicks(targets, rng)
    else:
        clicks = [[] for _ in targets]
    losses, logits, dice = [], None, None
    n = rounds_of(mode, k)
    for r in range(n):
        pts = None
        if any(clicks):
            xy, lab = points_tensor(clicks)
            pts = (xy.to(dev), lab.to(dev))
        mask_in = logits.detach() if (use_mask and logits is not None) else None
        logits, iou = model.decode(feats, pts, boxes, mask_in)
        loss, dice = loss_fn(logits, iou, gt)
        losses.append(loss)
        if r < n - 1:
            preds = predicted_masks(logits.detach().float().cpu(), targets)
            for cl, t, pred in zip(clicks, targets, preds, strict=True):
                cl += ck.error_clicks(t.gt, pred, 1)
    return torch.stack(losses).mean(), dice


@torch.no_grad()
def validate(model, feats_all, targets, batch: int = 32, limit: int = 400) -> dict:
    """Mean Dice (model frame) of 1 click, 3 clicks and the tight box on validation targets.

    The first click is at the target's centre, the next ones at the centre of the largest
    error region, with the logits fed back; deterministic.
    """
    model.eval()
    rng = np.random.default_rng(0)
    if len(targets) > limit:
        targets = [targets[i] for i in sorted(rng.choice(len(targets), limit, replace=False))]
    dev = next(model.parameters()).device
    sums = {"click1": 0.0, "click3": 0.0, "box": 0.0}
    for i in range(0, len(targets), batch):
        ts = targets[i : i + batch]
        feats = feats_all[[t.slice_id for t in ts]].to(dev).float()
        gt = torch.from_numpy(np.stack([t.gt for t in ts])[:, None].astype(np.float32)).to(dev)
        clicks = [[ck.first_click(t.gt)] for t in ts]
        logits = None
        for r in range(3):
            xy, lab = points_tensor(clicks)
            logits, iou = model.decode(feats, (xy.to(dev), lab.to(dev)), None, logits)
            _, dice = loss_fn(logits, iou, gt)
            if r == 0:
                sums["click1"] += float(dice.sum())
            preds = predicted_masks(logits.float().cpu(), ts)
            for cl, t, pred in zip(clicks, ts, preds, strict=True):
                cl += ck.error_clicks(t.gt, pred, 1)
        sums["click3"] += float(dice.sum())
        boxes = np.stack([jittered_box(t, rng, max_px=0.0) for t in ts])
        logits, iou = model.decode(feats, None, torch.from_numpy(boxes).to(dev), None)
        sums["box"] += float(loss_fn(logits, iou, gt)[1].sum())
    model.train()
    return {k: round(v / max(len(targets), 1), 4) for k, v in sums.items()} | {"n": len(targets)}
