"""Faithful LiteMedSAM-style preprocessing and its exact inverse.

A slice ``(H, W)`` with pixel spacing ``(sy, sx)`` is resized so that its longer *physical*
side becomes ``S`` model pixels (anisotropic pixels become square), min-max normalised to
[0, 1], padded bottom/right to ``S x S`` and repeated to 3 channels. :class:`SliceFrame`
records the mapping, so prompts go forward and masks come back exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .interactive.prompts import Box, Prompts
from .window import intensity_window

__all__ = ["SliceFrame", "intensity_window", "prepare_slice"]  # the window rule: .window


@dataclass(frozen=True)
class SliceFrame:
    """Geometry of one slice inside the square model input.

    Attributes:
        shape: ``(H, W)`` of the original slice.
        resized: ``(h, w)`` of the slice inside the ``S x S`` input, top-left aligned.
        size: ``S``.
    """

    shape: tuple[int, int]
    resized: tuple[int, int]
    size: int

    @classmethod
    def for_slice(cls, shape: tuple[int, int], spacing: tuple[float, float], size: int):
        """Frame for an ``(H, W)`` slice with ``(sy, sx)`` pixel spacing."""
        h, w = shape
        ph, pw = h * spacing[0], w * spacing[1]
        scale = size / max(ph, pw)
        resized = (max(1, min(size, round(ph * scale))), max(1, min(size, round(pw * scale))))
        return cls((h, w), resized, size)

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Model pixels per slice pixel along x and y."""
        return self.resized[1] / self.shape[1], self.resized[0] / self.shape[0]

    def points_to_model(self, prompts: Prompts) -> tuple[np.ndarray, np.ndarray] | None:
        """``(N, 2)`` xy in the model frame and ``(N,)`` labels, or None without points."""
        if not prompts.points:
            return None
        sx, sy = self.scale_xy
        xy = np.array([[p.x * sx, p.y * sy] for p in prompts.points], dtype=np.float32)
        labels = np.array([int(p.positive) for p in prompts.points], dtype=np.int64)
        return xy, labels

    def box_to_model(self, box: Box | None) -> np.ndarray | None:
        """``(4,)`` xyxy box in the model frame."""
        if box is None:
            return None
        b = box.normalised()
        sx, sy = self.scale_xy
        return np.array([b.x0 * sx, b.y0 * sy, b.x1 * sx, b.y1 * sy], dtype=np.float32)

    def logits_to_slice(self, logits: torch.Tensor) -> torch.Tensor:
        """Map ``(B, 1, S, S)`` model-frame logits to ``(B, 1, H, W)`` slice logits."""
        if logits.shape[-1] != self.size:
            logits = F.interpolate(
                logits, (self.size, self.size), mode="bilinear", align_corners=False
            )
        h, w = self.resized
        return F.interpolate(logits[..., :h, :w], self.shape, mode="bilinear", align_corners=False)

    def mask_to_model(self, mask: np.ndarray, low_res: int) -> torch.Tensor:
        """A ``(H, W)`` binary mask as ``(1, 1, low_res, low_res)`` logits (+-10) for SAM."""
        t = torch.as_tensor(mask, dtype=torch.float32)[None, None]
        h, w = self.resized
        t = F.interpolate(t, (h, w), mode="bilinear", align_corners=False)
        t = F.pad(t, (0, self.size - w, 0, self.size - h))
        t = F.interpolate(t, (low_res, low_res), mode="bilinear", align_corners=False)
        return (t > 0.5).float() * 20.0 - 10.0


def prepare_slice(
    image: np.ndarray, window: tuple[float, float], frame: SliceFrame
) -> torch.Tensor:
    """Turn a raw ``(H, W)`` slice into a ``(1, 3, S, S)`` float32 model input in [0, 1]."""
    lo, hi = window
    img = (np.clip(image.astype(np.float32), lo, hi) - lo) * (255.0 / (hi - lo))
    t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
    h, w = frame.resized
    mode = "area" if h <= frame.shape[0] and w <= frame.shape[1] else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    t = F.interpolate(t, (h, w), mode=mode, **kwargs)
    lo_t, hi_t = t.min(), t.max()
    t = (t - lo_t) / torch.clamp(hi_t - lo_t, min=1e-8)
    t = F.pad(t, (0, frame.size - w, 0, frame.size - h))
    return t.expand(-1, 3, -1, -1).contiguous()
