"""SAM's ViT image encoder (ViTDet-style backbone), written to load SAM / MedSAM weights.

The module tree mirrors the ``image_encoder.*`` part of the official Segment Anything
checkpoints (``sam_vit_b_01ec64.pth``, ``medsam_vit_b.pth``), so after stripping the
``image_encoder.`` prefix their tensors load into :class:`ImageEncoderViT` with
``strict=True``. The default constructor arguments give the ViT-B configuration.

Tokens travel through the transformer channel-last, as ``(B, H, W, C)`` grids. Most blocks
attend inside non-overlapping ``window_size x window_size`` windows (the grid is zero-padded
up to a multiple of the window first); the blocks listed in ``global_attn_indexes`` attend
over the whole grid. Every attention layer adds a decomposed relative-position bias (one
learned table per axis).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from fmseg.models.layers import LayerNorm2d, MLPBlock

__all__ = [
    "Attention",
    "Block",
    "ImageEncoderViT",
    "PatchEmbed",
    "decomposed_rel_pos_bias",
    "relative_position_table",
    "window_partition",
    "window_unpartition",
]


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut a token grid into square windows, zero-padding bottom/right edges if needed.

    Args:
        x: Token grid of shape ``(B, H, W, C)``.
        window_size: Side length ``w`` of each window.

    Returns:
        A pair ``(windows, (Hp, Wp))``: ``windows`` has shape ``(B * nH * nW, w, w, C)`` with
        ``nH = Hp // w`` and ``nW = Wp // w``, ordered batch-major then row-major over
        windows; ``(Hp, Wp)`` is the padded grid size.
    """
    _, h, w, _ = x.shape
    pad_h = -h % window_size
    pad_w = -w % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    windows = rearrange(
        x, "b (nh wh) (nw ww) c -> (b nh nw) wh ww c", wh=window_size, ww=window_size
    )
    return windows, (h + pad_h, w + pad_w)


def window_unpartition(
    windows: torch.Tensor,
    window_size: int,
    padded_hw: tuple[int, int],
    hw: tuple[int, int],
) -> torch.Tensor:
    """Undo :func:`window_partition`: stitch windows back together and crop the padding.

    Args:
        windows: Windows of shape ``(B * nH * nW, w, w, C)``.
        window_size: Side length ``w`` of each window.
        padded_hw: Padded grid size ``(Hp, Wp)`` returned by :func:`window_partition`.
        hw: Original grid size ``(H, W)`` before padding.

    Returns:
        Token grid of shape ``(B, H, W, C)``.
    """
    hp, wp = padded_hw
    h, w = hw
    x = rearrange(
        windows,
        "(b nh nw) wh ww c -> b (nh wh) (nw ww) c",
        nh=hp // window_size,
        nw=wp // window_size,
    )
    if hp != h or wp != w:
        x = x[:, :h, :w, :].contiguous()
    return x


def relative_position_table(size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Expand a learned 1-D relative-position table into a per-(query, key) lookup.

    Entry ``[i, j]`` of the result is the embedding for offset ``i - j``, i.e. row
    ``i - j + size - 1`` of the table. When the table was learned for a different length
    than ``2 * size - 1`` (e.g. a global-attention block run at another input resolution),
    it is first resized with linear interpolation.

    Args:
        size: Number of positions ``S`` along the axis (same for queries and keys).
        rel_pos: Learned table of shape ``(L, D)``.

    Returns:
        Tensor of shape ``(S, S, D)``.
    """
    length = 2 * size - 1
    if rel_pos.shape[0] != length:
        resized = F.interpolate(rel_pos.t().unsqueeze(0), size=length, mode="linear")
        rel_pos = resized.squeeze(0).t()
    positions = torch.arange(size, device=rel_pos.device)
    offsets = positions[:, None] - positions[None, :] + (size - 1)
    return rel_pos[offsets]


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    hw: tuple[int, int],
) -> torch.Tensor:
    """Additive attention bias from decomposed (height + width) relative positions (MViTv2).

    For a query at ``(qy, qx)`` and a key at ``(ky, kx)`` the bias is
    ``q . Rh[qy - ky] + q . Rw[qx - kx]``, using the unscaled query.

    Args:
        q: Queries of shape ``(N, H * W, D)`` (``N`` = batch times heads), row-major tokens.
        rel_pos_h: Height table of shape ``(Lh, D)``.
        rel_pos_w: Width table of shape ``(Lw, D)``.
        hw: Grid size ``(H, W)``.

    Returns:
        Bias of shape ``(N, H * W, H * W)``, to add to the attention logits.
    """
    h, w = hw
    table_h = relative_position_table(h, rel_pos_h)  # (H, H, D)
    table_w = relative_position_table(w, rel_pos_w)  # (W, W, D)
    q_grid = rearrange(q, "n (h w) d -> n h w d", h=h, w=w)
    bias_h = torch.einsum("nyxd,ykd->nyxk", q_grid, table_h)  # (N, H, W, H)
    bias_w = torch.einsum("nyxd,xkd->nyxk", q_grid, table_w)  # (N, H, W, W)
    bias = bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]  # (N, H, W, H, W)
    return rearrange(bias, "n qh qw kh kw -> n (qh qw) (kh kw)")


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: a strided convolution, output channel-last.

    Args:
        patch_size: Side length of each square patch (kernel size and stride).
        in_chans: Number of image channels.
        embed_dim: Token dimension.
    """

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed patches.

        Args:
            x: Images of shape ``(B, in_chans, H, W)``.

        Returns:
            Token grid of shape ``(B, H // patch, W // patch, embed_dim)``.
        """
        return self.proj(x).permute(0, 2, 3, 1)


class Attention(nn.Module):
    """Multi-head self-attention over a token grid with decomposed relative-position bias.

    Args:
        dim: Token dimension.
        num_heads: Number of attention heads; must divide ``dim``.
        rel_pos_size: Grid size ``(H, W)`` the relative-position tables are sized for:
            the window for windowed blocks, the full token grid for global blocks.
        qkv_bias: Whether the fused query/key/value projection has a bias.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        rel_pos_size: tuple[int, int],
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over all tokens of each grid.

        Args:
            x: Token grids of shape ``(B, H, W, C)``.

        Returns:
            Tensor of shape ``(B, H, W, C)``.
        """
        b, h, w, _ = x.shape
        qkv = rearrange(
            self.qkv(x), "b h w (three nh d) -> three (b nh) (h w) d", three=3, nh=self.num_heads
        )
        q, k, v = qkv.unbind(0)  # each (B * heads, H * W, head_dim)
        bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w))
        # Default scale is head_dim ** -0.5; the bias is added after scaling.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = rearrange(out, "(b nh) (h w) d -> b h w (nh d)", b=b, h=h, w=w)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block with windowed or global attention.

    Args:
        dim: Token dimension.
        num_heads: Number of attention heads.
        window_size: Window side length; ``0`` means global attention over the full grid.
        grid_size: Token grid size ``(H, W)`` at the pretraining resolution (sizes the
            relative-position tables of global blocks).
        mlp_ratio: Hidden width of the feed-forward layer relative to ``dim``.
        qkv_bias: Whether the query/key/value projection has a bias.
        norm_eps: Epsilon of both LayerNorms.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        grid_size: tuple[int, int],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        rel_pos_size = (window_size, window_size) if window_size > 0 else grid_size
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, rel_pos_size=rel_pos_size, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply attention and feed-forward, each with a residual connection.

        Args:
            x: Token grid of shape ``(B, H, W, C)``.

        Returns:
            Tensor of shape ``(B, H, W, C)``.
        """
        y = self.norm1(x)
        if self.window_size > 0:
            hw = (y.shape[1], y.shape[2])
            windows, padded_hw = window_partition(y, self.window_size)
            y = window_unpartition(self.attn(windows), self.window_size, padded_hw, hw)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM's ViT image encoder: patch embedding, transformer blocks, convolutional neck.

    Defaults are the ViT-B configuration of SAM / MedSAM (about 89.7M parameters). Shrink
    the arguments for a tiny variant, e.g.
    ``ImageEncoderViT(img_size=64, embed_dim=32, depth=2, num_heads=2, window_size=4,
    global_attn_indexes=(1,), out_chans=16)``.

    Inputs at ``img_size`` use the learned absolute position embedding as is; other input
    sizes get it bicubically resized to the token grid (SAM itself always feeds
    ``img_size`` x ``img_size`` padded images).

    Args:
        img_size: Pretraining input side length; sizes the absolute position embedding
            ``(1, img_size // patch_size, img_size // patch_size, embed_dim)``.
        patch_size: Patch side length (the output stride).
        in_chans: Number of image channels.
        embed_dim: Token dimension.
        depth: Number of transformer blocks.
        num_heads: Attention heads per block.
        mlp_ratio: Feed-forward hidden width relative to ``embed_dim``.
        out_chans: Channels of the output embedding (the neck's width).
        qkv_bias: Whether query/key/value projections have a bias.
        window_size: Window side length of the windowed-attention blocks.
        global_attn_indexes: Indices of the blocks that use global attention.
        norm_eps: Epsilon of the transformer LayerNorms.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        bad = [i for i in global_attn_indexes if not 0 <= i < depth]
        if bad:
            raise ValueError(f"global_attn_indexes {bad} out of range for depth={depth}")
        self.img_size = img_size
        self.patch_size = patch_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        global_set = set(global_attn_indexes)
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                window_size=0 if i in global_set else window_size,
                grid_size=(grid, grid),
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                norm_eps=norm_eps,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def _pos_embed_for(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Absolute position embedding of shape ``(1, H, W, C)`` for a token grid ``(H, W)``."""
        if tuple(self.pos_embed.shape[1:3]) == grid_hw:
            return self.pos_embed
        resized = F.interpolate(
            self.pos_embed.permute(0, 3, 1, 2), size=grid_hw, mode="bicubic", align_corners=False
        )
        return resized.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode images into a dense embedding.

        Args:
            x: Normalised images of shape ``(B, in_chans, H, W)``; ``H`` and ``W`` are
                normally ``img_size``.

        Returns:
            Image embedding of shape ``(B, out_chans, H // patch_size, W // patch_size)``.
        """
        x = self.patch_embed(x)
        x = x + self._pos_embed_for((x.shape[1], x.shape[2]))
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
