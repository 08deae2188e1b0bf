"""UniverSeg: in-context segmentation with CrossBlocks (Butoi et al., ICCV 2023).

Written from the paper and the public reference; module and parameter names follow the
reference so that its published state dict (``universeg_v1_nf64_ss64_STA.pt``) loads with
``strict=True``: ``enc_blocks.{i}.cross.cross_conv``, ``enc_blocks.{i}.target.vmapped.conv``,
``enc_blocks.{i}.support.vmapped.conv``, the same under ``dec_blocks``, and ``out_conv.conv``.

Shapes: ``B`` batch, ``S`` support size, ``K`` target group (1 for UniverSeg), ``C`` channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import einops as E
import torch
from torch import nn
from torch.nn import functional as F


def grouped(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 4D module to a ``(B, S, C, H, W)`` tensor by folding ``S`` into the batch.

    The folded tensor is channels-last: oneDNN's convolutions on these few-channel maps run
    up to 2x faster than on NCHW (the result is the same up to fp32 rounding).
    """
    b = x.shape[0]
    y = module(_fold(x))
    return E.rearrange(y, "(B S) C H W -> B S C H W", B=b)


def _fold(x: torch.Tensor) -> torch.Tensor:
    """``(B, S, C, H, W) -> ((B S), C, H, W)`` in channels-last memory."""
    x = E.rearrange(x, "B S C H W -> (B S) C H W")
    return x.contiguous(memory_format=torch.channels_last)


def group_mean(x: torch.Tensor) -> torch.Tensor:
    """``(B, S, C, H, W) -> (B, 1, C, H, W)`` mean over ``S``.

    Reduced with channels innermost (a contiguous reduction for channels-last data: several
    times faster than ``x.mean(1)`` on that layout; the same values).
    """
    return x.permute(0, 1, 3, 4, 2).mean(1, keepdim=True).permute(0, 1, 4, 2, 3)


class ConvAct(nn.Module):
    """``conv`` (same padding) followed by an optional LeakyReLU ``nonlin``."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
        self.nonlin = nn.LeakyReLU(inplace=True) if act else nn.Identity()
        nonlinearity = "leaky_relu" if act else "linear"
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity=nonlinearity)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, c_in, H, W) -> (N, c_out, H, W)``."""
        return self.nonlin(self.conv(x))


class Grouped(nn.Module):
    """Wrap a 4D module (as ``vmapped``) so it runs on ``(B, S, C, H, W)`` tensors."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.vmapped = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, S, C, H, W) -> (B, S, C', H, W)``."""
        return grouped(self.vmapped, x)


class CrossOp(nn.Module):
    """Convolve every (target, support) pair, then average over the other side.

    The weight is the reference's ``(C_out, C_t + C_s, k, k)``. Convolution is linear, so
    ``conv([t; s]) = conv_t(t) + conv_s(s)``: each side is convolved once and the pairs are
    formed by broadcasting, ``K + S`` convolutions instead of ``K * S`` of twice the width
    (the same result up to rounding).
    """

    def __init__(self, c_target: int, c_support: int, c_out: int, kernel: int = 3):
        super().__init__()
        self.c_target = c_target
        self.cross_conv = nn.Conv2d(c_target + c_support, c_out, kernel, padding=kernel // 2)
        nn.init.kaiming_normal_(self.cross_conv.weight, nonlinearity="linear")
        nn.init.zeros_(self.cross_conv.bias)

    def _sides(self, target: torch.Tensor, support: torch.Tensor):
        w, pad = self.cross_conv.weight, self.cross_conv.padding
        wt, ws = w[:, : self.c_target], w[:, self.c_target :]
        t = grouped(lambda x: F.conv2d(x, wt, self.cross_conv.bias, padding=pad), target)
        s = grouped(lambda x: F.conv2d(x, ws, None, padding=pad), support)
        return t, s

    def pairs(self, target: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """Every pair, as the reference: ``(B, K, S, C_out, H, W)`` (tests only)."""
        t, s = self._sides(target, support)
        return t[:, :, None] + s[:, None]

    def forward(self, target: torch.Tensor, support: torch.Tensor):
        """``(B, K, Ct, H, W), (B, S, Cs, H, W) -> (B, K, C, H, W), (B, S, C, H, W)``.

        The means of the pair tensor, computed without building it:
        ``mean_S(t + s) = t + mean_S(s)`` and ``mean_K(t + s) = mean_K(t) + s``.
        """
        t, s = self._sides(target, support)
        mean_s, mean_t = group_mean(s), group_mean(t)
        return t.add_(mean_s), s.add_(mean_t)  # in place: no new full-size tensors


class CrossBlock(nn.Module):
    """CrossOp followed by separate per-image convolutions of target and support."""

    def __init__(self, c_target: int, c_support: int, c_cross: int, c_conv: int):
        super().__init__()
        self.cross = CrossOp(c_target, c_support, c_cross)
        self.target = Grouped(ConvAct(c_cross, c_conv))
        self.support = Grouped(ConvAct(c_cross, c_conv))

    def forward(self, target: torch.Tensor, support: torch.Tensor):
        """``(B, K, Ct, H, W), (B, S, Cs, H, W) -> (B, K, C, H, W), (B, S, C, H, W)``."""
        target, support = self.cross(target, support)
        return self.target(target), self.support(support)

    def target_only(self, target: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """Only the new target features (the last block's support output is never used)."""
        return self.target(self.cross(target, support)[0])


class UniverSeg(nn.Module):
    """U-Net of CrossBlocks: a target image segmented from ``S`` (image, mask) pairs.

    Args:
        widths: Feature width of each encoder level (the reference v1: ``(64, 64, 64, 64)``);
            the decoder mirrors the first ``len(widths) - 1`` levels.
        target_channels: Input channels of a target image (1; Tyche adds a noise channel).
    """

    def __init__(self, widths: Sequence[int] = (64, 64, 64, 64), target_channels: int = 1):
        super().__init__()
        self.widths = tuple(widths)
        self.enc_blocks = nn.ModuleList()
        self.dec_blocks = nn.ModuleList()
        ct, cs = target_channels, 2
        for w in self.widths:
            self.enc_blocks.append(CrossBlock(ct, cs, w, w))
            ct = cs = w
        for w, skip in zip(self.widths[-2::-1], self.widths[-2::-1], strict=True):
            self.dec_blocks.append(CrossBlock(ct + skip, cs + skip, w, w))
            ct = cs = w
        self.out_conv = ConvAct(ct, 1, kernel=1, act=False)

    def features(self, target: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """Run the U-Net: ``(B, K, Ct, H, W), (B, S, 2, H, W) -> (B, K, C, H, W)``."""
        return cross_unet(
            self.enc_blocks, self.dec_blocks, target, support, self.dec_blocks[-1].target_only
        )

    def forward(
        self, target_image: torch.Tensor, support_images: torch.Tensor, support_labels: torch.Tensor
    ) -> torch.Tensor:
        """Segment targets from supports.

        Args:
            target_image: ``(B, 1, H, W)`` in [0, 1]; H, W divisible by ``2 ** (levels - 1)``.
            support_images: ``(B, S, 1, H, W)`` in [0, 1].
            support_labels: ``(B, S, 1, H, W)`` in [0, 1].

        Returns:
            ``(B, 1, H, W)`` logits.
        """
        support = torch.cat([support_images, support_labels], dim=2)
        target = self.features(target_image[:, None], support)
        return self.out_conv(target[:, 0])


def cross_unet(enc_blocks, dec_blocks, target, support, last=None) -> torch.Tensor:
    """The shared U-Net pass of UniverSeg and Tyche over paired (target, support) blocks.

    Args:
        enc_blocks: Blocks ``(target, support) -> (target, support)``, one per level.
        dec_blocks: Decoder blocks, fed the upsampled features concatenated with the skips.
        target: ``(B, K, Ct, H, W)``.
        support: ``(B, S, Cs, H, W)``.
        last: Optional ``(target, support) -> target`` replacing the last decoder block
            (its support output is never used).

    Returns:
        ``(B, K, C, H, W)`` target features.
    """
    skips = []
    for i, block in enumerate(enc_blocks):
        target, support = block(target, support)
        if i < len(enc_blocks) - 1:
            skips.append((target, support))
            target, support = max_pool2(target), max_pool2(support)
    for i, block in enumerate(dec_blocks):
        t_skip, s_skip = skips.pop()
        target = cat_channels(_up(target), t_skip)
        support = cat_channels(_up(support), s_skip)
        if last is not None and i == len(dec_blocks) - 1:
            return last(target, support)
        target, support = block(target, support)
    return target


def cat_channels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B, S, Ca, H, W), (B, S, Cb, H, W) -> (B, S, Ca + Cb, H, W)``, kept channels-last."""
    return grouped(lambda x: torch.cat([x, _fold(b)], dim=1), a)


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling with stride 2 of ``(..., H, W)`` (odd edges dropped, as ``max_pool2d``).

    Written as the maximum of four strided views: exactly ``F.max_pool2d(x, 2)``, about 4x
    faster on CPU because no argmax indices are computed.
    """
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


def _up(x: torch.Tensor) -> torch.Tensor:
    """2x bilinear upsampling with aligned corners (as ``nn.UpsamplingBilinear2d``)."""
    return grouped(
        lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=True), x
    )


def build_universeg(tiny: bool = False) -> UniverSeg:
    """The reference v1 architecture (width 64); ``tiny``: width 4 for fast tests."""
    return UniverSeg((4, 4, 4, 4) if tiny else (64, 64, 64, 64))


def build_universeg_small(tiny: bool = False) -> UniverSeg:
    """Fmseg's own CPU-trainable in-context network (width 16); ``tiny``: width 4."""
    return UniverSeg((4, 4, 4, 4) if tiny else (16, 16, 16, 16))
