"""Sliding-window inference for 3D networks trained on patches (e.g. 96^3 SwinUNETR).

:func:`sliding_window_logits` uses MONAI's ``sliding_window_inference`` when MONAI is installed
and a plain-torch twin otherwise; :func:`sliding_window_iter` is that twin as a generator that
yields :class:`~fmseg.progress.Progress` after every batch of windows (for front ends with a
progress bar and Cancel) and returns the logits. Both blend overlapping windows with a Gaussian
(or constant) importance map and pad volumes smaller than the patch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..progress import Progress, Work, drain

Predictor = Callable[[torch.Tensor], torch.Tensor]
SIGMA_SCALE = 0.125  # MONAI's default: sigma = patch side / 8


def pad_to_multiple(
    x: torch.Tensor, m: int | Sequence[int], mode: str = "constant"
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the spatial sides of ``(B, C, *S)`` at their ends up to multiples of ``m``.

    Args:
        x: Tensor with spatial dimensions last.
        m: One multiple for all sides, or one per side.
        mode: ``F.pad`` mode (``"constant"`` pads with 0, or ``"replicate"``, ``"reflect"``).

    Returns:
        The padded tensor and the index that undoes it: ``padded[crop]`` has ``x``'s shape.
    """
    spatial = x.shape[2:]
    mult = (m,) * len(spatial) if isinstance(m, int) else tuple(m)
    extra = [(-s) % k for s, k in zip(spatial, mult, strict=True)]
    pads = [p for e in reversed(extra) for p in (0, e)]  # F.pad wants last dimension first
    crop = (slice(None), slice(None), *(slice(0, s) for s in spatial))
    if not any(extra):
        return x, crop
    return F.pad(x, pads, mode=mode), crop


def _pad_to_patch(x: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad sides shorter than the patch symmetrically, as MONAI's inferer does."""
    spatial = x.shape[2:]
    extra = [max(p - s, 0) for s, p in zip(spatial, patch, strict=True)]
    before = [e // 2 for e in extra]
    pads = [p for e, b in zip(reversed(extra), reversed(before), strict=True) for p in (b, e - b)]
    crop = (
        slice(None),
        slice(None),
        *(slice(b, b + s) for b, s in zip(before, spatial, strict=True)),
    )
    return (F.pad(x, pads) if any(extra) else x), crop


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Window starts along one side: step ``patch * (1 - overlap)``, the last flush with the end."""
    if size <= patch:
        return [0]
    step = max(int(patch * (1 - overlap)), 1)
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def importance_map(
    patch: Sequence[int], mode: str = "gaussian", device: torch.device | None = None
) -> torch.Tensor:
    """``(*patch)`` blending weights: a Gaussian (sigma = side / 8, peak 1) or ones."""
    if mode == "constant":
        return torch.ones(tuple(patch), device=device)
    if mode != "gaussian":
        raise ValueError(f"blend mode must be 'gaussian' or 'constant', got '{mode}'")
    weights = torch.ones((), device=device)
    for p in patch:  # separable: outer product of one Gaussian per axis
        i = torch.arange(p, dtype=torch.float32, device=device)
        g = torch.exp(-0.5 * ((i - (p - 1) / 2) / (SIGMA_SCALE * p)) ** 2)
        weights = weights[..., None] * g
    weights = weights / weights.max()
    return weights.clamp_min(1e-4)  # corner voxels covered by one window still get a weight


def sliding_window_iter(
    model: Predictor,
    volume: torch.Tensor,
    patch: Sequence[int],
    overlap: float = 0.25,
    batch: int = 1,
    mode: str = "gaussian",
) -> Work[torch.Tensor]:
    """Plain-torch sliding-window inference, yielding progress after each batch of windows.

    Args:
        model: Maps ``(N, C, *patch)`` to ``(N, K, *patch)`` logits.
        volume: ``(B, C, D, H, W)`` input.
        patch: Window size ``(pd, ph, pw)``.
        overlap: Fraction of a window shared with its neighbour, in [0, 1).
        batch: Windows per forward pass.
        mode: ``"gaussian"`` or ``"constant"`` blending.

    Yields:
        ``Progress(done, total, "window i/n")``.

    Returns:
        ``(B, K, D, H, W)`` blended logits.
    """
    patch = _check(volume, patch, overlap)
    padded, crop = _pad_to_patch(volume, patch)
    starts = [window_starts(s, p, overlap) for s, p in zip(padded.shape[2:], patch, strict=True)]
    corners = list(itertools.product(*starts))
    weight = importance_map(patch, mode, padded.device)
    out = norm = None
    for first in range(0, len(corners), batch):
        group = corners[first : first + batch]
        views = [_window(c, patch) for c in group]
        with torch.no_grad():  # not around the loop: grad mode must not leak out at a yield
            logits = model(torch.cat([padded[v] for v in views]))
        if out is None:
            out = padded.new_zeros((padded.shape[0], logits.shape[1], *padded.shape[2:]))
            norm = padded.new_zeros(padded.shape[2:])
        for v, chunk in zip(views, logits.split(padded.shape[0]), strict=True):
            out[v] += chunk * weight
            norm[v[2:]] += weight
        done = first + len(group)
        yield Progress(done, len(corners), f"window {done}/{len(corners)}")
    return (out / norm)[crop]


def _check(volume: torch.Tensor, patch: Sequence[int], overlap: float) -> tuple[int, ...]:
    if volume.ndim != len(patch) + 2:
        raise ValueError(
            f"a {len(patch)}-D patch needs a (B, C, *spatial) volume, got {tuple(volume.shape)}"
        )
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return tuple(int(p) for p in patch)


def _window(corner: Sequence[int], patch: Sequence[int]) -> tuple[slice, ...]:
    return (
        slice(None),
        slice(None),
        *(slice(c, c + p) for c, p in zip(corner, patch, strict=True)),
    )


def _monai_inferer() -> Callable | None:
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        return None
    return sliding_window_inference


def sliding_window_logits(
    model: Predictor,
    volume: torch.Tensor,
    patch: Sequence[int],
    overlap: float = 0.25,
    batch: int = 1,
    mode: str = "gaussian",
    use_monai: bool | None = None,
) -> torch.Tensor:
    """Logits of a whole volume from a network trained on patches.

    Args:
        model: Maps ``(N, C, *patch)`` to ``(N, K, *patch)`` logits.
        volume: ``(B, C, D, H, W)`` input (padded internally where smaller than ``patch``).
        patch: Window size ``(pd, ph, pw)``.
        overlap: Fraction of a window shared with its neighbour, in [0, 1).
        batch: Windows per forward pass.
        mode: ``"gaussian"`` or ``"constant"`` blending.
        use_monai: Force (True) or avoid (False) MONAI's inferer; None uses it when installed.

    Returns:
        ``(B, K, D, H, W)`` logits.
    """
    patch = _check(volume, patch, overlap)
    inferer = _monai_inferer() if use_monai is not False else None
    if use_monai and inferer is None:
        raise ImportError("use_monai=True needs MONAI: pip install 'fmseg[volumetric]'")
    if inferer is None:
        return drain(sliding_window_iter(model, volume, patch, overlap, batch, mode))
    with torch.no_grad():
        logits = inferer(
            volume, tuple(patch), batch, model, overlap=overlap, mode=mode, progress=False
        )
    return logits.as_tensor() if hasattr(logits, "as_tensor") else logits  # MetaTensor -> Tensor
