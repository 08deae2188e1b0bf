"""SAM-style prompt encoder: points, boxes and low-resolution masks to embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import LayerNorm2d


class RandomFourierPE(nn.Module):
    """Positional encoding of 2D coordinates with fixed random Gaussian frequencies."""

    def __init__(self, num_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def encode(self, coords01: torch.Tensor) -> torch.Tensor:
        """Encode ``(..., 2)`` xy coordinates in [0, 1] as ``(..., 2 * num_feats)``."""
        proj = (2 * coords01 - 1) @ self.positional_encoding_gaussian_matrix * (2 * math.pi)
        return torch.cat([proj.sin(), proj.cos()], dim=-1)

    def grid(self, h: int, w: int) -> torch.Tensor:
        """Encoding of every cell centre of an ``h x w`` grid, ``(C, h, w)``."""
        dev = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return self.encode(torch.stack([xx, yy], dim=-1)).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Embeds sparse (points, box corners) and dense (mask) prompts.

    Args:
        embed_dim: Token width ``C``.
        image_embedding_size: ``(h, w)`` of the image embedding.
        input_image_size: ``(H, W)`` of the padded model input, the frame of prompt coordinates.
        mask_in_chans: Hidden channels of the mask downscaler.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        input_image_size: tuple[int, int] = (256, 256),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = RandomFourierPE(embed_dim // 2)
        # 0: negative point, 1: positive point, 2: box top-left, 3: box bottom-right.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid, ``(1, C, h, w)``."""
        return self.pe_layer.grid(*self.image_embedding_size).unsqueeze(0)

    def _normalise(self, xy: torch.Tensor) -> torch.Tensor:
        h, w = self.input_image_size
        scale = torch.tensor([w, h], dtype=torch.float32, device=xy.device)
        return (xy.float() + 0.5) / scale

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """``(B, N, 2)`` xy and ``(B, N)`` labels (1 pos, 0 neg, -1 pad) -> ``(B, N', C)``."""
        if pad:
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        emb = self.pe_layer.encode(self._normalise(coords))
        lab = labels[..., None]
        emb = torch.where(lab == -1, self.not_a_point_embed.weight, emb)
        emb = emb + (lab == 0) * self.point_embeddings[0].weight
        return emb + (lab == 1) * self.point_embeddings[1].weight

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(B, 4)`` or ``(B, 1, 4)`` xyxy boxes -> ``(B, 2, C)`` corner tokens."""
        corners = self.pe_layer.encode(self._normalise(boxes.reshape(-1, 2, 2)))
        tl = corners[:, 0] + self.point_embeddings[2].weight
        br = corners[:, 1] + self.point_embeddings[3].weight
        return torch.stack([tl, br], dim=1)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed prompts.

        Args:
            points: ``(B, N, 2)`` xy coordinates in the model-input frame and ``(B, N)`` labels.
            boxes: ``(B, 4)`` xyxy boxes in the model-input frame.
            masks: ``(B, 1, 4h, 4w)`` mask logits.

        Returns:
            Sparse tokens ``(B, N', C)`` and dense embeddings ``(B, C, h, w)``.
        """
        bs = next((t.shape[0] for t in (points and points[0], boxes, masks) if t is not None), 1)
        dev = self.no_mask_embed.weight.device
        sparse = [torch.empty(bs, 0, self.embed_dim, device=dev)]
        if points is not None:
            sparse.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return torch.cat(sparse, dim=1), dense
