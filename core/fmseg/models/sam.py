"""SAM-family model: image encoder + prompt encoder + mask decoder, and family builders."""

from __future__ import annotations

import torch
from torch import nn

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .tiny_vit import TinyViT


class SamModel(nn.Module):
    """Holds the three SAM parts; a predictor decides how to call them.

    Attributes:
        image_encoder: ``(B, 3, S, S) -> (B, C, S/r, S/r)``.
        prompt_encoder: Prompts in the ``S x S`` input frame -> tokens.
        mask_decoder: Tokens + embedding -> ``(B, M, 4 S/r, 4 S/r)`` mask logits.
    """

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder):
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    @property
    def img_size(self) -> int:
        """Side of the square model input."""
        return self.prompt_encoder.input_image_size[0]

    def decode(
        self,
        embedding: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode prompts against a cached embedding.

        Args:
            embedding: ``(1 or B, C, h, w)`` image embedding.
            points: ``(B, N, 2)`` xy and ``(B, N)`` labels in the input frame.
            boxes: ``(B, 4)`` xyxy in the input frame.
            mask_logits: ``(B, 1, 4h, 4w)`` previous low-resolution logits.
            multimask: Return the three ambiguity masks.

        Returns:
            Low-resolution logits ``(B, M, 4h, 4w)`` and IoU predictions ``(B, M)``.
        """
        sparse, dense = self.prompt_encoder(points, boxes, mask_logits)
        return self.mask_decoder(
            embedding, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=multimask
        )

    def forward(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, 3, S, S)`` and decode ``(B, 4)`` boxes -> ``(B, 1, 4h, 4w)`` logits."""
        return self.decode(self.image_encoder(image), boxes=boxes)[0]


def build_lite_medsam(tiny: bool = False) -> SamModel:
    """LiteMedSAM (TinyViT encoder, 256 input, 64x64 embedding); ``tiny`` for fast tests."""
    if tiny:
        enc = TinyViT(64, (8, 16, 16, 32), (1, 1, 1, 1), (1, 2, 2, 2), (4, 4, 4, 4), (2, 2, 1), 32)
        pe = PromptEncoder(32, (16, 16), (64, 64), 8)
        return SamModel(enc, pe, MaskDecoder(32, 3, depth=1, num_heads=2, mlp_dim=64))
    enc = TinyViT(256)
    pe = PromptEncoder(256, (64, 64), (256, 256), 16)
    return SamModel(enc, pe, MaskDecoder(256, 3, depth=2, num_heads=8, mlp_dim=2048))


def build_sam_vit_b(tiny: bool = False) -> SamModel:
    """SAM / MedSAM ViT-B (1024 input, 64x64 embedding); ``tiny`` for fast tests."""
    from .sam_vit import ImageEncoderViT

    if tiny:
        enc = ImageEncoderViT(
            img_size=64,
            patch_size=16,
            embed_dim=32,
            depth=2,
            num_heads=2,
            window_size=2,
            global_attn_indexes=(1,),
            out_chans=32,
        )
        pe = PromptEncoder(32, (4, 4), (64, 64), 8)
        return SamModel(enc, pe, MaskDecoder(32, 3, depth=1, num_heads=2, mlp_dim=64))
    enc = ImageEncoderViT()
    pe = PromptEncoder(256, (64, 64), (1024, 1024), 16)
    return SamModel(enc, pe, MaskDecoder(256, 3, depth=2, num_heads=8, mlp_dim=2048))
