"""TinyViT image encoder in the LiteMedSAM configuration.

The layout (stage names, ``Conv2d_BN`` pairs, attention-bias tables) mirrors the published
LiteMedSAM checkpoint so that its state dict loads with ``strict=True``. LiteMedSAM's patch
embedding uses 1x1 convolutions, so the first (convolutional) stage runs at full input
resolution; the later stages halve the grid twice to reach a ``(B, 256, H/4, W/4)`` embedding.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from .layers import LayerNorm2d


class ConvBN(nn.Sequential):
    """Bias-free convolution followed by batch norm (children named ``c`` and ``bn``)."""

    def __init__(
        self, cin: int, cout: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class PatchEmbed(nn.Module):
    """Two 1x1 ConvBN layers lifting ``(B, 3, H, W)`` to ``(B, C, H, W)``."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2), nn.GELU(), ConvBN(embed_dim // 2, embed_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed pixels: ``(B, 3, H, W) -> (B, C, H, W)``."""
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block (expand, depthwise 3x3, project) with a skip connection."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, ks=3, pad=1, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        y = self.act(self.conv1(x))
        y = self.act(self.conv2(y))
        return self.act(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Channel projection and depthwise strided conv: ``(B, C, H, W) -> (B, C', H/s, W/s)``."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, ks=3, stride=stride, pad=1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Downsample a channels-first map."""
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


class WindowAttention(nn.Module):
    """Multi-head attention inside a square window with learned relative-offset biases."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(off, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        n = len(points)
        self.register_buffer("bias_idxs", torch.tensor(idxs).view(n, n), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B', N, C) -> (B', N, C)`` with ``N = window**2``."""
        qkv = self.qkv(self.norm(x))
        # The checkpoint packs q, k, v per head: (h t d), not (t h d).
        q, k, v = rearrange(qkv, "b n (h t d) -> t b h n d", h=self.num_heads, t=3)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases[:, self.bias_idxs]
        out = attn.softmax(dim=-1) @ v
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class TinyViTBlock(nn.Module):
    """Window attention, depthwise local conv and MLP on a ``(B, H*W, C)`` token grid."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, ks=3, pad=1, groups=dim)
        self.mlp = TokenMLP(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, C) -> (B, L, C)`` with ``L = resolution**2``."""
        h = w = self.resolution
        x = x + self._windowed_attention(x, h, w)
        grid = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
        x = rearrange(self.local_conv(grid), "b c h w -> b (h w) c")
        return x + self.mlp(x)

    def _windowed_attention(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        ws = self.window
        if h == ws and w == ws:
            return self.attn(x)
        grid = rearrange(x, "b (h w) c -> b h w c", h=h, w=w)
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:
            grid = nn.functional.pad(grid, (0, 0, 0, pad_r, 0, pad_b))
        nh, nw = grid.shape[1] // ws, grid.shape[2] // ws
        win = rearrange(grid, "b (nh p) (nw q) c -> (b nh nw) (p q) c", p=ws, q=ws)
        win = self.attn(win)
        grid = rearrange(win, "(b nh nw) (p q) c -> b (nh p) (nw q) c", nh=nh, nw=nw, p=ws, q=ws)
        return rearrange(grid[:, :h, :w], "b h w c -> b (h w) c")


class TokenMLP(nn.Module):
    """Pre-norm two-layer GELU MLP on tokens."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C) -> (..., C)``."""
        return self.fc2(self.act(self.fc1(self.norm(x))))


class Stage(nn.Module):
    """A list of blocks followed by an optional :class:`PatchMerging`."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None, resolution: int):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.resolution = resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the blocks; tokens ``(B, L, C)`` or maps ``(B, C, H, W)`` in, tokens out."""
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            if x.ndim == 3:
                x = rearrange(x, "b (h w) c -> b c h w", h=self.resolution)
            x = rearrange(self.downsample(x), "b c h w -> b (h w) c")
        return x


class TinyViT(nn.Module):
    """TinyViT encoder: ``(B, 3, S, S) -> (B, out_chans, S/4, S/4)``.

    Args:
        img_size: Side ``S`` of the square input.
        embed_dims: Channels per stage.
        depths: Blocks per stage (stage 0 is convolutional).
        num_heads: Attention heads per stage (stage 0 ignored).
        window_sizes: Attention window per stage (stage 0 ignored).
        strides: Downsampling stride after each stage but the last.
        out_chans: Channels of the output embedding.
    """

    def __init__(
        self,
        img_size: int = 256,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        strides: Sequence[int] = (2, 2, 1),
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(3, embed_dims[0])
        self.layers = nn.ModuleList()
        res = img_size
        for i, dim in enumerate(embed_dims):
            last = i == len(embed_dims) - 1
            down = None if last else PatchMerging(dim, embed_dims[i + 1], strides[i])
            if i == 0:
                blocks: list[nn.Module] = [MBConv(dim, 4.0) for _ in range(depths[i])]
            else:
                blocks = [
                    TinyViTBlock(dim, res, num_heads[i], window_sizes[i]) for _ in range(depths[i])
                ]
            self.layers.append(Stage(blocks, down, res))
            if not last:
                res //= strides[i]
        self.out_res = res
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, 3, S, S)`` images in [0, 1] into ``(B, 256, S/4, S/4)`` embeddings."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        x = rearrange(x, "b (h w) c -> b c h w", h=self.out_res)
        return self.neck(x)
