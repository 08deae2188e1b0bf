"""Black-box heads on frozen features: linear probe and spatial adapter (2D or 3D)."""

from __future__ import annotations

import torch
from torch import nn


def _conv(dims: int):
    if dims not in (2, 3):
        raise ValueError(f"heads work on 2D or 3D features, not {dims}D")
    return nn.Conv2d if dims == 2 else nn.Conv3d


class LinearProbe(nn.Module):
    """A 1x1 convolution from ``C`` feature channels to one binary logit.

    Args:
        channels: Feature channels ``C``.
        dims: 2 for ``(B, C, H, W)`` features, 3 for ``(B, C, D, H, W)``.
    """

    def __init__(self, channels: int, dims: int = 2) -> None:
        super().__init__()
        self.conv = _conv(dims)(channels, 1, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    @torch.no_grad()
    def init_from_classes(self, weight: torch.Tensor, positive: int, negative: int = 0) -> None:
        """Start from a pretrained multi-class 1x1 head: logit = class ``positive`` - ``negative``.

        Args:
            weight: ``(K, C, 1, 1[, 1])`` weight of the pretrained head (no bias).
            positive: Index of the class being adapted.
            negative: Index of the background class.
        """
        w = weight[positive] - weight[negative]
        if w.shape != self.conv.weight.shape[1:]:
            raise ValueError(f"head weight {tuple(weight.shape)} does not fit this probe")
        self.conv.weight.copy_(w[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` -> ``(B, 1, *S)`` logits."""
        return self.conv(x)


class SpatialAdapter(nn.Module):
    """Residual ``conv-ReLU-conv`` on features (last conv zero-initialised), then a probe.

    At initialisation the residual branch is zero, so the output equals the probe's.

    Args:
        channels: Feature channels ``C``.
        dims: 2 or 3.
        hidden: Channels inside the residual branch.
    """

    def __init__(self, channels: int, dims: int = 2, hidden: int = 32) -> None:
        super().__init__()
        conv = _conv(dims)
        self.conv1 = conv(channels, hidden, 3, padding=1)
        self.conv2 = conv(hidden, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.probe = LinearProbe(channels, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` -> ``(B, 1, *S)`` logits."""
        return self.probe(x + self.conv2(torch.relu(self.conv1(x))))


def build_head(method: str, channels: int, dims: int) -> nn.Module:
    """The head for a black-box method name (``linear-probe`` or ``spatial-adapter``)."""
    if method == "spatial-adapter":
        return SpatialAdapter(channels, dims)
    return LinearProbe(channels, dims)
