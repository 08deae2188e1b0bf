"""SAM-style mask decoder: a two-way transformer between prompt tokens and image tokens."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from .layers import MLP, LayerNorm2d, MLPBlock


class Attention(nn.Module):
    """Multi-head attention whose inner width may be ``embedding_dim / downsample_rate``."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        inner = embedding_dim // downsample_rate
        if inner % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the inner width {inner}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, inner)
        self.k_proj = nn.Linear(embedding_dim, inner)
        self.v_proj = nn.Linear(embedding_dim, inner)
        self.out_proj = nn.Linear(inner, embedding_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q (B, Nq, C)``, ``k, v (B, Nk, C)`` -> ``(B, Nq, C)``."""
        q, k, v = (
            rearrange(proj(t), "b n (h d) -> b h n d", h=self.num_heads)
            for proj, t in ((self.q_proj, q), (self.k_proj, k), (self.v_proj, v))
        )
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        return self.out_proj(rearrange(attn @ v, "b h n d -> b n (h d)"))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image, MLP on tokens, image->token attention."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update tokens ``(B, Nq, C)`` and image tokens ``(B, Nk, C)``."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of :class:`TwoWayAttentionBlock` plus a final token->image attention."""

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, skip_first_layer_pe=i == 0)
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image, image_pe (B, C, h, w)``, ``tokens (B, N, C)`` -> tokens, image tokens."""
        keys = rearrange(image, "b c h w -> b (h w) c")
        key_pe = rearrange(image_pe, "b c h w -> b (h w) c")
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class MaskDecoder(nn.Module):
    """Predicts ``1 + num_multimask_outputs`` masks and their IoU scores.

    Args:
        transformer_dim: Token width ``C``.
        num_multimask_outputs: Extra masks for ambiguous prompts.
        depth: Two-way transformer depth.
        num_heads: Attention heads.
        mlp_dim: Hidden width of the transformer MLP.
    """

    def __init__(
        self,
        transformer_dim: int = 256,
        num_multimask_outputs: int = 3,
        depth: int = 2,
        num_heads: int = 8,
        mlp_dim: int = 2048,
    ) -> None:
        super().__init__()
        c = transformer_dim
        self.transformer = TwoWayTransformer(depth, c, num_heads, mlp_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, c)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, c)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(c, c // 4, kernel_size=2, stride=2),
            LayerNorm2d(c // 4),
            nn.GELU(),
            nn.ConvTranspose2d(c // 4, c // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(c, c, c // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(c, 256, self.num_mask_tokens, 3)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode masks.

        Args:
            image_embeddings: ``(B or 1, C, h, w)``; broadcast over prompts when ``1``.
            image_pe: ``(1, C, h, w)`` positional encoding.
            sparse_prompt_embeddings: ``(B, N, C)``.
            dense_prompt_embeddings: ``(B, C, h, w)``.
            multimask_output: Return the 3 ambiguity masks instead of the single one.

        Returns:
            Mask logits ``(B, M, 4h, 4w)`` and IoU predictions ``(B, M)``.
        """
        b = sparse_prompt_embeddings.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
        src = image_embeddings.expand(b, -1, -1, -1) + dense_prompt_embeddings
        pos = image_pe.expand(b, -1, -1, -1)
        hs, src = self.transformer(src, pos, tokens)
        h, w = image_embeddings.shape[-2:]
        up = self.output_upscaling(rearrange(src, "b (h w) c -> b c h w", h=h, w=w))
        hyper = torch.stack(
            [mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        masks = torch.einsum("bmc,bchw->bmhw", hyper, up)
        iou = self.iou_prediction_head(hs[:, 0])
        sel = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sel], iou[:, sel]
