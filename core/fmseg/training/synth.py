"""SynthSeg-style images from label maps, and random-shape label maps.

After Billot et al. 2023 (SynthSeg) and the synthetic tasks of UniverSeg / anatomix: every
label gets an intensity drawn from a random Gaussian mixture, then the image goes through a
random smooth deformation, a multiplicative bias field, blur (resolution loss), noise, a gamma
curve and, sometimes, contrast inversion. One *appearance* (:class:`Appearance`) is drawn per
task, so the support and query slices of an episode share a contrast, as slices of one scan do.

Works on stacks ``(N, H, W)`` (a 3D volume or the slices of one episode). Output in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class Appearance:
    """Random contrast of one synthetic scan.

    Attributes:
        means: ``(L,)`` mean intensity of each label value (index = label value).
        stds: ``(L,)`` within-label standard deviation.
        blur: Gaussian sigma in pixels (resolution loss), 0 for none.
        noise: Standard deviation of additive noise.
        bias: Amplitude of the multiplicative bias field (0 = none).
        gamma: Exponent applied after normalisation.
        invert: Whether to invert the contrast.
        warp: Amplitude of the smooth in-plane deformation, in pixels.
    """

    means: np.ndarray
    stds: np.ndarray
    blur: float
    noise: float
    bias: float
    gamma: float
    invert: bool
    warp: float


def draw_appearance(n_labels: int, rng: np.random.Generator) -> Appearance:
    """A random :class:`Appearance` for label values ``0 .. n_labels - 1``.

    Means come from a mixture: most labels uniform in [0, 1], some labels pulled towards the
    value of another label (structures of similar tissue), so that neighbouring structures are
    not always separable by intensity alone.
    """
    means = rng.uniform(0, 1, n_labels)
    tied = rng.random(n_labels) < 0.3
    if n_labels > 1:
        means[tied] = means[rng.integers(0, n_labels, tied.sum())] + rng.normal(0, 0.03, tied.sum())
    return Appearance(
        means=means.astype(np.float32),
        stds=rng.uniform(0.0, 0.08, n_labels).astype(np.float32),
        blur=float(rng.choice([0.0, rng.uniform(0.3, 1.5)], p=[0.4, 0.6])),
        noise=float(rng.uniform(0.0, 0.06)),
        bias=float(rng.uniform(0.0, 0.5)),
        gamma=float(np.exp(rng.normal(0, 0.25))),
        invert=bool(rng.random() < 0.1),
        warp=float(rng.choice([0.0, rng.uniform(1.0, 4.0)], p=[0.5, 0.5])),
    )


def smooth_field(shape: tuple[int, ...], cells: int, gen: torch.Generator) -> torch.Tensor:
    """A smooth random field in [-1, 1] of ``shape`` ``(N, H, W)``: trilinearly upsampled noise."""
    n = shape[0]
    low = torch.rand(1, 1, max(2, min(n, cells)), cells, cells, generator=gen) * 2 - 1
    return F.interpolate(low, size=shape, mode="trilinear", align_corners=True)[0, 0]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """In-plane Gaussian blur of ``(N, H, W)``."""
    if sigma <= 0:
        return x
    r = max(1, int(round(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    y = F.conv2d(F.pad(x[:, None], (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y[:, 0]


def deform(labels: torch.Tensor, amplitude: float, gen: torch.Generator) -> torch.Tensor:
    """Smooth random in-plane deformation of ``(N, H, W)`` label maps (nearest neighbour).

    The same displacement field is used for every slice of the stack, so a structure keeps its
    shape across the support and query slices of one task.
    """
    if amplitude <= 0:
        return labels
    n, h, w = labels.shape
    disp = torch.stack([smooth_field((1, h, w), 5, gen)[0] for _ in range(2)], -1)
    disp = disp * (2 * amplitude / max(h, w))
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grid = (torch.stack([xx, yy], -1) + disp)[None].expand(n, h, w, 2)
    out = F.grid_sample(labels[:, None].float(), grid, mode="nearest", align_corners=True)
    return out[:, 0].to(labels.dtype)


def synthesize(
    labels: torch.Tensor, appearance: Appearance, gen: torch.Generator, warp: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic image of ``labels``.

    Args:
        labels: ``(N, H, W)`` integer label map (values < ``len(appearance.means)``).
        appearance: The scan's random contrast (:func:`draw_appearance`).
        gen: Torch generator for the per-voxel noise and fields.
        warp: Apply the appearance's deformation (the returned labels are deformed too).

    Returns:
        ``(image, labels)``: ``(N, H, W)`` float32 in [0, 1], and the (deformed) labels.
    """
    if warp:
        labels = deform(labels, appearance.warp, gen)
    lab = labels.long().clamp(0, len(appearance.means) - 1)
    means = torch.from_numpy(appearance.means)[lab]
    stds = torch.from_numpy(appearance.stds)[lab]
    img = means + stds * torch.randn(lab.shape, generator=gen)
    img = gaussian_blur(img, appearance.blur)
    if appearance.bias > 0:
        img = img * torch.exp(appearance.bias * smooth_field(tuple(lab.shape), 4, gen))
    img = img + appearance.noise * torch.randn(lab.shape, generator=gen)
    lo, hi = img.min(), img.max()
    img = ((img - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1) ** appearance.gamma
    if appearance.invert:
        img = 1 - img
    return img.float(), labels


def random_label_map(
    shape: tuple[int, int, int], n_labels: int, gen: torch.Generator, smooth: int = 6
) -> torch.Tensor:
    """Random-shape label map ``(N, H, W)`` with values ``0 .. n_labels - 1``.

    The arg-max of ``n_labels`` smooth random fields (smoothed noise, thresholded against each
    other): blob-like regions that continue from slice to slice, as organs do.
    """
    fields = torch.stack([smooth_field(shape, smooth, gen) for _ in range(n_labels)])
    fields = fields + 0.15 * torch.stack(
        [smooth_field(shape, 2 * smooth, gen) for _ in range(n_labels)]
    )
    return fields.argmax(0).to(torch.int16)
