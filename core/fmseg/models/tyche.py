"""Tyche-TS: stochastic in-context segmentation (Rakic et al., CVPR 2024).

A UniverSeg-shaped U-Net whose target branch holds ``K`` candidates, each the query image
plus its own Gaussian noise channel. In every block the candidates' *mean* meets the supports
(a CrossOp with LeakyReLU), and each candidate is then convolved together with that shared
mean (the SetBlock ``meanconv``): candidates interact only through their mean, which lets
them spread out under a best-candidate loss. Written from the paper and the public reference;
parameter names follow the reference so ``tyche_v1_model_weights_CVPR.pt`` (``["model"]``)
loads with ``strict=True``.

Shapes: ``B`` batch, ``K`` candidates, ``S`` supports, ``C`` channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .universeg import ConvAct, Grouped, cross_unet, group_mean, grouped


class CrossOpAct(nn.Module):
    """Pairwise (target, support) convolution followed by LeakyReLU (``cross_conv``).

    With a single target (the candidates' mean) the pair tensor is ``(B, S, C, H, W)``.
    """

    def __init__(self, c_target: int, c_support: int, c_out: int):
        super().__init__()
        self.c_target = c_target
        self.cross_conv = nn.Conv2d(c_target + c_support, c_out, 3, padding=1)
        self.nonlin = nn.LeakyReLU(inplace=True)
        nn.init.kaiming_normal_(self.cross_conv.weight, nonlinearity="leaky_relu")
        nn.init.zeros_(self.cross_conv.bias)

    def forward(self, mean: torch.Tensor, support: torch.Tensor):
        """``(B, 1, Ct, H, W), (B, S, Cs, H, W) -> (B, 1, C, H, W), (B, S, C, H, W)``."""
        w, b = self.cross_conv.weight, self.cross_conv.bias
        wt, ws = w[:, : self.c_target], w[:, self.c_target :]
        t = grouped(lambda x: F.conv2d(x, wt, b, padding=1), mean)
        s = grouped(lambda x: F.conv2d(x, ws, None, padding=1), support)
        inter = self.nonlin(s.add_(t))  # linear up to here: one conv per side, pairs by broadcast
        return group_mean(inter), inter


class SetBlock(nn.Module):
    """Tyche's CrossBlockTarget: mean-vs-support interaction, then per-candidate convs."""

    def __init__(self, c_target: int, c_support: int, width: int):
        super().__init__()
        self.cross = CrossOpAct(c_target, c_support, width)
        self.meanconv = Grouped(ConvAct(c_target + width, width))
        self.target = Grouped(ConvAct(width, width))
        self.support = Grouped(ConvAct(width, width))

    def forward(self, target: torch.Tensor, support: torch.Tensor):
        """``(B, K, Ct, H, W), (B, S, Cs, H, W) -> (B, K, C, H, W), (B, S, C, H, W)``."""
        mean, support = self.cross(group_mean(target), support)
        return self.target(self._meanconv(target, mean)), self.support(support)

    def target_only(self, target: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """Only the new candidates (the last block's support output is never used)."""
        mean, _ = self.cross(group_mean(target), support)
        return self.target(self._meanconv(target, mean))

    def _meanconv(self, target: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """``meanconv(cat([target_k, mean]))`` for every candidate ``k``, the mean part once.

        The convolution is linear, so its mean half is computed on ``(B, 1, C, H, W)`` and
        broadcast over the ``K`` candidates: same result, ``K - 1`` fewer mean convolutions.
        """
        unit = self.meanconv.vmapped
        w, ct = unit.conv.weight, target.shape[2]
        pad = unit.conv.padding
        t = grouped(lambda x: F.conv2d(x, w[:, :ct], unit.conv.bias, padding=pad), target)
        m = grouped(lambda x: F.conv2d(x, w[:, ct:], None, padding=pad), mean)
        return unit.nonlin(t.add_(m))  # in place: no new full-size tensor


class TycheTS(nn.Module):
    """Tyche-TS network.

    Args:
        widths: Width of each encoder level (reference v1: ``(64, 64, 64, 64)``).
    """

    def __init__(self, widths: Sequence[int] = (64, 64, 64, 64)):
        super().__init__()
        self.widths = tuple(widths)
        self.enc_blocks = nn.ModuleList()
        self.dec_blocks = nn.ModuleList()
        c = 2  # image + noise (target), image + label (support)
        for w in self.widths:
            self.enc_blocks.append(SetBlock(c, c, w))
            c = w
        for w in self.widths[-2::-1]:
            self.dec_blocks.append(SetBlock(c + w, c + w, w))
            c = w
        self.out_conv = ConvAct(c, 1, kernel=1, act=False)

    def forward(
        self,
        target_image: torch.Tensor,
        support_images: torch.Tensor,
        support_labels: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        """``K`` candidate segmentations of each target.

        Args:
            target_image: ``(B, 1, H, W)`` in [0, 1].
            support_images: ``(B, S, 1, H, W)`` in [0, 1].
            support_labels: ``(B, S, 1, H, W)`` in [0, 1].
            noise: ``(B, K, 1, H, W)`` standard normal, one channel per candidate.

        Returns:
            ``(B, K, H, W)`` logits.
        """
        k = noise.shape[1]
        target = torch.cat([target_image[:, None].expand(-1, k, -1, -1, -1), noise], dim=2)
        support = torch.cat([support_images, support_labels], dim=2)
        last = self.dec_blocks[-1].target_only
        target = cross_unet(self.enc_blocks, self.dec_blocks, target, support, last)
        return grouped(self.out_conv, target)[:, :, 0]


def build_tyche(tiny: bool = False) -> TycheTS:
    """The reference v1 (width 64); ``tiny``: width 4 for tests."""
    return TycheTS((4, 4, 4, 4) if tiny else (64, 64, 64, 64))


def build_tyche_small(tiny: bool = False) -> TycheTS:
    """The CPU-trainable Tyche shipped by fmseg (width 16); ``tiny``: width 4."""
    return TycheTS((4, 4, 4, 4) if tiny else (16, 16, 16, 16))
