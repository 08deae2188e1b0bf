"""Adapt a SAM-family model to one 2D slice: embed once, then decode prompts quickly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..transforms import SliceFrame, prepare_slice
from .accel import BACKENDS, build_encoder, fuse_for_inference
from .prompts import PromptError, Prompts

_IMAGENET_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
_IMAGENET_STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def normalise(x: torch.Tensor, normalisation: str) -> torch.Tensor:
    """A ``(B, 3, S, S)`` min-max model input in [0, 1] as the encoder expects it.

    ``"minmax"`` (LiteMedSAM, MedSAM) keeps it; ``"imagenet"`` (SAM) maps it to 0-255 and
    applies ImageNet's mean and standard deviation. The one place this rule lives: sessions,
    adapter training and adapter apply all call it.
    """
    if normalisation == "imagenet":
        return (x * 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
    if normalisation != "minmax":
        raise ValueError(f"unknown normalisation '{normalisation}'")
    return x


@dataclass(frozen=True)
class SliceEmbedding:
    """Image-encoder output for one slice plus the geometry to map prompts and masks.

    Attributes:
        features: ``(1, C, h, w)`` float32 tensor on the predictor's device.
        frame: Slice geometry inside the model input.
    """

    features: torch.Tensor
    frame: SliceFrame


@dataclass(frozen=True)
class Prediction:
    """Decoder output for one slice.

    Attributes:
        prob: ``(H, W)`` float32 foreground probability in slice pixels.
        low_res_logits: ``(1, 1, 4h, 4w)`` logits, reusable as a mask prompt.
        iou: The decoder's own quality estimate in [0, 1].
    """

    prob: np.ndarray
    low_res_logits: torch.Tensor
    iou: float

    def mask(self, threshold: float = 0.5) -> np.ndarray:
        """Binary ``(H, W)`` mask."""
        return self.prob > threshold


class SamPredictor:
    """Slice-level predictor for a :class:`~fmseg.models.sam.SamModel`.

    Args:
        model: A SAM-family model in eval mode.
        normalisation: ``"minmax"`` or ``"imagenet"`` (see :class:`~fmseg.registry.ModelSpec`).
        encoder_backend: ``"torch"``, ``"onnx"`` or ``"auto"`` (ONNX Runtime on CPU when
            installed, PyTorch on CUDA); see :func:`fmseg.interactive.accel.build_encoder`.
            Inference runs on fused copies made here and at the first embedding: later changes
            to ``model``'s weights are not seen (make a new predictor).
    """

    def __init__(
        self, model: nn.Module, normalisation: str = "minmax", encoder_backend: str = "auto"
    ) -> None:
        if normalisation not in ("minmax", "imagenet"):
            raise ValueError(f"unknown normalisation '{normalisation}'")
        if encoder_backend not in BACKENDS:
            raise ValueError(f"unknown encoder backend '{encoder_backend}'")
        self.model = model
        self.encoder_backend = encoder_backend
        self._encoder = None  # built at the first embedding (an ONNX export may take seconds)
        self._decoder = fuse_for_inference(model, fuse_encoder=False)
        self.normalisation = normalisation
        self.device = next(model.parameters()).device
        self.size = model.img_size

    def frame(self, shape: tuple[int, int], spacing: tuple[float, float] = (1.0, 1.0)):
        """The :class:`SliceFrame` of an ``(H, W)`` slice with ``(sy, sx)`` spacing."""
        return SliceFrame.for_slice(shape, spacing, self.size)

    def preprocess(
        self,
        image: np.ndarray,
        window: tuple[float, float],
        spacing: tuple[float, float] = (1.0, 1.0),
    ) -> tuple[torch.Tensor, SliceFrame]:
        """``(H, W)`` slice -> ``(1, 3, S, S)`` model input and its frame."""
        if image.ndim != 2:
            raise ValueError(f"expected a 2D slice (H, W), got shape {image.shape}")
        frame = self.frame(image.shape, spacing)
        return normalise(prepare_slice(image, window, frame), self.normalisation), frame

    @torch.inference_mode()
    def embed_batch(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` inputs -> ``(B, C, h, w)`` embeddings (on the model's device)."""
        if self._encoder is None:
            self._encoder = build_encoder(self.model.image_encoder, self.encoder_backend)
        return self._encoder(inputs.to(self.device)).to(self.device)

    def embed(
        self,
        image: np.ndarray,
        window: tuple[float, float],
        spacing: tuple[float, float] = (1.0, 1.0),
    ) -> SliceEmbedding:
        """Embed one ``(H, W)`` slice."""
        x, frame = self.preprocess(image, window, spacing)
        return SliceEmbedding(self.embed_batch(x), frame)

    @torch.inference_mode()
    def predict(
        self, emb: SliceEmbedding, prompts: Prompts, mask_input: torch.Tensor | None = None
    ) -> Prediction:
        """Decode prompts against a cached embedding.

        Args:
            emb: Embedding of the slice.
            prompts: Box and/or points in slice pixels.
            mask_input: Optional ``(1, 1, 4h, 4w)`` low-resolution logits (e.g. the previous
                slice's prediction during propagation).

        Raises:
            PromptError: No prompt, or a prompt outside the slice.
        """
        if prompts.empty and mask_input is None:
            raise PromptError("place a box or a point first")
        prompts.validate(emb.frame.shape)
        pts = emb.frame.points_to_model(prompts)
        box = emb.frame.box_to_model(prompts.box)
        dev = self.device
        points = None
        if pts is not None:
            points = (
                torch.from_numpy(pts[0])[None].to(dev),
                torch.from_numpy(pts[1])[None].to(dev),
            )
        boxes = None if box is None else torch.from_numpy(box)[None].to(dev)
        masks = None if mask_input is None else mask_input.to(dev)
        logits, iou = self._decoder.decode(emb.features, points, boxes, masks)
        prob = torch.sigmoid(emb.frame.logits_to_slice(logits.float()))[0, 0]
        return Prediction(prob.cpu().numpy(), logits, float(iou[0, 0]))
