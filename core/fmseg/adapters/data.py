"""Few-shot training data: annotated slices (2D) or annotated volumes (3D), checked and prepared.

A clinician's annotation is an image volume, a label volume of the same shape, a label value
and optionally the indices of the annotated slices along an axis (the rest of the volume is
then unknown, not background). Everything is converted here into model-ready tensors once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..interactive.predictor import normalise
from ..registry import get_spec
from ..transforms import SliceFrame, prepare_slice
from ..validation import check_volume
from ..window import WindowLike, intensity_window
from .sliding import pad_to_multiple

MIN_VOXELS = 10


class AnnotationError(ValueError):
    """Unusable training annotations (the message says which and why)."""


@dataclass(frozen=True)
class Annotation:
    """One annotated image.

    Attributes:
        image: ``(D0, D1, D2)`` intensities (2D images: ``(1, H, W)``).
        labels: Same shape, integer label map.
        label: The label value to learn.
        axis: Slice axis of ``slices``.
        slices: Annotated slice indices along ``axis``; None: the whole volume is annotated.
        spacing: Voxel size per axis (mm).
    """

    image: np.ndarray
    labels: np.ndarray
    label: int
    axis: int = 0
    slices: tuple[int, ...] | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def annotated_slices(self) -> tuple[int, ...]:
        """The annotated slice indices (all slices when :attr:`slices` is None)."""
        if self.slices is None:
            return tuple(range(self.image.shape[self.axis]))
        return self.slices


def check_annotation(a: Annotation) -> Annotation:
    """Validate one annotation; returns it with a float32 image and 3D arrays.

    Raises:
        AnnotationError: Shape mismatch, label value absent, too few voxels, bad slices.
    """
    image = check_volume(a.image)
    labels = np.asarray(a.labels)
    image, labels = (image[None], labels[None]) if image.ndim == 2 else (image, labels)
    if labels.shape != image.shape:
        raise AnnotationError(
            f"image {image.shape} and label {labels.shape} shapes differ: they must match"
        )
    n = image.shape[a.axis]
    bad = [s for s in a.annotated_slices() if not 0 <= s < n]
    if bad:
        raise AnnotationError(f"annotated slices {bad} are outside 0..{n - 1} on axis {a.axis}")
    fg = sum(int((np.take(labels, s, a.axis) == a.label).sum()) for s in a.annotated_slices())
    if not (labels == a.label).any():
        raise AnnotationError(f"label value {a.label} does not occur in the label image")
    if fg < MIN_VOXELS:
        raise AnnotationError(
            f"label {a.label} has only {fg} voxels on the annotated slices (need {MIN_VOXELS})"
        )
    spacing = tuple(float(s) for s in a.spacing)[-3:]
    spacing = (1.0,) * (3 - len(spacing)) + spacing
    return Annotation(image, labels, int(a.label), a.axis, a.slices, spacing)


@dataclass
class SliceSample:
    """One 2D training slice in the square model frame.

    Attributes:
        image: ``(3, S, S)`` model input.
        target: ``(1, S, S)`` binary target.
        weight: ``(1, S, S)`` 1 inside the slice, 0 on the padding.
        box: ``(4,)`` xyxy ground-truth box in the model frame, or None if empty.
        frame: Geometry of the slice in the model frame (maps outputs back to the slice).
    """

    image: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor
    box: torch.Tensor | None
    frame: SliceFrame | None = None


def _to_frame(mask: np.ndarray, frame: SliceFrame) -> torch.Tensor:
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    h, w = frame.resized
    t = F.interpolate(t, (h, w), mode="nearest")
    return F.pad(t, (0, frame.size - w, 0, frame.size - h))[0]


def _box(target: torch.Tensor, margin: float) -> torch.Tensor | None:
    ys, xs = torch.nonzero(target[0], as_tuple=True)
    if len(xs) == 0:
        return None
    b = [xs.min() - margin, ys.min() - margin, xs.max() + margin, ys.max() + margin]
    return torch.tensor([float(v) for v in b]).clamp(0, target.shape[-1] - 1)


def slice_samples(
    annotations: Sequence[Annotation],
    size: int,
    box_margin: float = 3.0,
    window: WindowLike = None,
    normalisation: str = "minmax",
) -> list[SliceSample]:
    """All annotated slices of ``annotations`` as :class:`SliceSample` (model frame ``size``).

    ``window`` (None: the default policy) is resolved on each training image.
    """
    samples = []
    for a in map(check_annotation, annotations):
        win = intensity_window(a.image, window)
        sp = tuple(s for i, s in enumerate(a.spacing) if i != a.axis)
        for s in a.annotated_slices():
            img = np.take(a.image, s, a.axis)
            frame = SliceFrame.for_slice(img.shape, sp, size)
            target = _to_frame(np.take(a.labels, s, a.axis) == a.label, frame)
            weight = _to_frame(np.ones(img.shape, bool), frame)
            x = normalise(prepare_slice(img, win, frame), normalisation)[0]
            samples.append(SliceSample(x, target, weight, _box(target, box_margin), frame))
    return samples


@dataclass
class VolumeSample:
    """One 3D training volume on the model's grid.

    Attributes:
        image: ``(1, D, H, W)`` z-scored image, sides padded to multiples of 16.
        target: ``(1, D, H, W)`` binary target (0 where unknown).
        weight: ``(1, D, H, W)`` 1 on annotated voxels, 0 elsewhere.
    """

    image: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor


def model_grid(shape: Sequence[int], spacing: Sequence[float], target: float) -> tuple[int, ...]:
    """Shape of a volume resampled from ``spacing`` to isotropic ``target`` mm."""
    return tuple(max(1, round(n * s / target)) for n, s in zip(shape, spacing, strict=False))


def grid_mm(base: str) -> float:
    """Isotropic voxel size (mm) a registered 3D base expects (its ``extra["spacing_mm"]``)."""
    return float(get_spec(base).extra.get("spacing_mm", 1.0))


def to_model_grid(image: np.ndarray, spacing, target: float) -> torch.Tensor:
    """``(D0, D1, D2)`` -> ``(1, 1, d0, d1, d2)`` resampled (trilinear) and z-scored."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    t = F.interpolate(t, model_grid(image.shape, spacing, target), mode="trilinear")
    return (t - t.mean()) / t.std().clamp_min(1e-6)


def volume_sample(a: Annotation, target_spacing: float, multiple: int = 16) -> VolumeSample:
    """Resample one annotation onto the model grid, keeping only annotated slices as known.

    Sides are padded to multiples of ``multiple`` (what the network's strides need).
    """
    a = check_annotation(a)
    image = to_model_grid(a.image, a.spacing, target_spacing)[0]
    grid = image.shape[1:]
    target = torch.zeros((1, *grid))
    weight = torch.zeros((1, *grid))
    fg = torch.from_numpy((a.labels == a.label).astype(np.float32))
    if a.slices is None:
        target[0] = F.interpolate(fg[None, None], grid, mode="nearest")[0, 0]
        weight[:] = 1.0
    else:
        plane = tuple(g for i, g in enumerate(grid) if i != a.axis)
        scale = a.spacing[a.axis] / target_spacing
        for s in a.slices:
            j = min(grid[a.axis] - 1, round(s * scale))
            sl = F.interpolate(fg.select(a.axis, s)[None, None], plane, mode="nearest")[0, 0]
            target[0].select(a.axis, j).copy_(sl)
            weight[0].select(a.axis, j).fill_(1.0)
    image, target, weight = (
        pad_to_multiple(t[None], multiple, "replicate")[0][0] for t in (image, target, weight)
    )
    return VolumeSample(image, target, weight)
