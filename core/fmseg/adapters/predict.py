"""Apply an adapted model to new images: 2D slice by slice, or 3D on the model's grid."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..progress import Progress, Work
from ..prompts import Box
from ..transforms import SliceFrame, intensity_window, prepare_slice
from ..validation import check_volume
from .bases import AdaptedModel, SamAdapted
from .data import pad16, to_model_grid


def _device(model: AdaptedModel) -> torch.device:
    return next(model.parameters()).device


def predict_slices_iter(
    model: SamAdapted,
    volume: np.ndarray,
    axis: int = 0,
    slices: Iterable[int] | None = None,
    boxes: Mapping[int, Box] | None = None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Work[np.ndarray]:
    """Probabilities of a 2D adapted model on slices of ``volume``; yields progress.

    Args:
        model: Adapted SAM-family model.
        volume: ``(D0, D1, D2)`` image.
        axis: Slice axis.
        slices: Slice indices (None: every slice; with boxes: the boxed slices).
        boxes: Box per slice index (needed for ``head="box"`` adapters; slices without a
            box stay 0).
        spacing: Voxel size per axis.

    Returns:
        ``(D0, D1, D2)`` float32 foreground probability (0 on slices not run).
    """
    volume = check_volume(volume)
    volume = volume[None] if volume.ndim == 2 else volume
    if model.head_kind == "box" and not boxes:
        raise ValueError("this adapter keeps the box-prompted decoder: give a box per slice")
    todo = sorted(boxes) if slices is None and boxes else list(slices or range(volume.shape[axis]))
    window = intensity_window(volume, None)
    sp = tuple(s for i, s in enumerate(spacing) if i != axis)
    prob = np.zeros(volume.shape, np.float32)
    for n, s in enumerate(todo):
        img = np.take(volume, s, axis)
        frame = SliceFrame.for_slice(img.shape, sp, model.net.img_size)
        batch = {"image": prepare_slice(img, window, frame).to(_device(model))}
        if model.head_kind == "box":
            if s not in boxes:
                continue
            batch["box"] = torch.from_numpy(frame.box_to_model(boxes[s]))[None].to(_device(model))
        with torch.inference_mode():
            p = torch.sigmoid(frame.logits_to_slice(model(batch).float()))[0, 0]
        prob[(slice(None),) * axis + (s,)] = p.cpu().numpy()
        yield Progress(n + 1, len(todo), f"slice {s}")
    return prob


def predict_volume_iter(
    model: AdaptedModel, volume: np.ndarray, spacing: tuple[float, float, float], grid_mm: float
) -> Work[np.ndarray]:
    """Probabilities of a 3D adapted model on a whole volume (on its ``grid_mm`` grid).

    Returns:
        ``volume``-shaped float32 foreground probability.
    """
    volume = check_volume(volume)
    if volume.ndim != 3:
        raise ValueError(f"3D adapters need a 3D volume, got shape {volume.shape}")
    yield Progress(0, 2, "resampling")
    x = to_model_grid(volume, spacing, grid_mm)
    shape = x.shape[2:]
    with torch.inference_mode():
        multiple = max(16, getattr(model.net, "divisor", 16))
        logits = model({"image": pad16(x, multiple).to(_device(model))})
    yield Progress(1, 2, "network")
    logits = logits[..., : shape[0], : shape[1], : shape[2]].float().cpu()
    logits = F.interpolate(logits, volume.shape, mode="trilinear")
    yield Progress(2, 2, "done")
    return torch.sigmoid(logits)[0, 0].numpy()
