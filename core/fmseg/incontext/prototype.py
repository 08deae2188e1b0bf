"""Training-free in-context segmentation on a promptable model's image features (PerSAM-like).

Support masks pool the image-encoder features into a foreground and a background prototype;
on a query, cells closer to the foreground prototype form a region whose box and most
similar point prompt the model's decoder, and a second pass prompted with the first mask's
box refines it (PerSAM's cascaded post-refinement). Works with any SAM-family entry of the
registry through :class:`~fmseg.interactive.predictor.SamPredictor`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ..interactive.cache import EmbeddingCache, array_digest
from ..interactive.predictor import SamPredictor, SliceEmbedding
from ..interactive.prompts import Box, Point, Prompts
from ..interactive.refine import largest_component
from .backends import Backend, Supports


class PrototypeBackend(Backend):
    """Prototype matching on image embeddings, then box + point prompts to the decoder.

    Args:
        predictor: Predictor of a SAM-family model (a click-trained decoder such as
            ``litemedsam-points`` uses the point best).
        cache: Embedding cache shared with other users of the predictor (optional).
        min_cells: Smallest matched region, in feature cells, taken as "structure present".
        refine: Run the second, box-from-mask decoding pass.
    """

    name = "prototype"

    def __init__(
        self,
        predictor: SamPredictor,
        cache: EmbeddingCache | None = None,
        min_cells: int = 3,
        refine: bool = True,
    ):
        self.predictor = predictor
        self.cache = cache if cache is not None else EmbeddingCache(max_bytes=1 << 30)
        self.min_cells, self.refine = min_cells, refine

    def embed(self, image: np.ndarray) -> SliceEmbedding:
        """Embedding of a [0, 1] slice, cached by content."""
        key = f"proto:{id(self.predictor.model)}:{array_digest(image)}"
        feats = self.cache.get(key)
        if feats is None:
            emb = self.predictor.embed(image, window=(0.0, 1.0))
            self.cache.put(key, emb.features.half())  # half the memory; prototypes are cosines
            return emb
        feats = feats.to(self.predictor.device, torch.float32)
        return SliceEmbedding(feats, self.predictor.frame(image.shape))

    @staticmethod
    def _cells(emb: SliceEmbedding, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Foreground fraction per feature cell and the valid-cell map, ``(h, w)`` each."""
        fr, (h, w) = emb.frame, emb.features.shape[-2:]
        t = torch.as_tensor(mask, dtype=torch.float32)[None, None]
        t = F.interpolate(t, fr.resized, mode="bilinear", align_corners=False)
        t = F.pad(t, (0, fr.size - fr.resized[1], 0, fr.size - fr.resized[0]))
        valid = F.pad(
            torch.ones(1, 1, *fr.resized), (0, fr.size - fr.resized[1], 0, fr.size - fr.resized[0])
        )
        frac = F.adaptive_avg_pool2d(t, (h, w))[0, 0]
        return frac, F.adaptive_avg_pool2d(valid, (h, w))[0, 0] > 0.5

    def prepare(self, supports: Supports) -> torch.Tensor:
        """``(2, C)`` unit foreground and background prototypes."""
        fg, bg = [], []
        for img, m in zip(supports.images, supports.masks, strict=True):
            emb = self.embed(np.asarray(img, np.float32))
            f = F.normalize(emb.features[0].float().cpu(), dim=0)  # (C, h, w)
            frac, valid = self._cells(emb, m)
            fg.append(f[:, frac > 0.5])
            bg.append(f[:, valid & (frac < 0.05)])
        fg_all, bg_all = torch.cat(fg, 1), torch.cat(bg, 1)
        if fg_all.shape[1] == 0:
            raise ValueError("the support masks are too small for the feature grid (< 1 cell)")
        return F.normalize(torch.stack([fg_all.mean(1), bg_all.mean(1)]), dim=1)

    def predict(self, state: torch.Tensor, queries: np.ndarray, positions=None) -> np.ndarray:
        """One decoder pass (or two with ``refine``) per query."""
        return np.stack([self._one(state, np.asarray(q, np.float32)) for q in queries])

    def _one(self, protos: torch.Tensor, query: np.ndarray) -> np.ndarray:
        emb = self.embed(query)
        f = F.normalize(emb.features[0].float().cpu(), dim=0)
        sim = torch.einsum("kc,chw->khw", protos, f)
        _, valid = self._cells(emb, np.ones(query.shape, bool))
        score = torch.where(valid, sim[0] - sim[1], torch.tensor(-1.0)).numpy()
        region = largest_component(score > 0)
        if region.sum() < self.min_cells:
            return np.zeros(query.shape, np.float32)
        prompts = Prompts(
            box=self._cell_box(emb, region), points=(self._peak(emb, sim[0], region),)
        )
        pred = self.predictor.predict(emb, prompts)
        if self.refine and pred.mask().any():
            ys, xs = np.nonzero(pred.mask())
            box = Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            pred = self.predictor.predict(emb, Prompts(box=box), mask_input=pred.low_res_logits)
        return pred.prob.astype(np.float32)

    @staticmethod
    def _cell_box(emb: SliceEmbedding, region: np.ndarray) -> Box:
        """Bounding box of feature cells, in slice pixels (clipped to the slice)."""
        fr, cell = emb.frame, emb.frame.size / region.shape[0]
        sx, sy = fr.scale_xy
        ys, xs = np.nonzero(region)
        h, w = fr.shape
        return Box(
            max(0.0, xs.min() * cell / sx),
            max(0.0, ys.min() * cell / sy),
            min(float(w), (xs.max() + 1) * cell / sx),
            min(float(h), (ys.max() + 1) * cell / sy),
        )

    @staticmethod
    def _peak(emb: SliceEmbedding, sim_fg: torch.Tensor, region: np.ndarray) -> Point:
        """Positive point at the most foreground-like cell of the region (slice pixels)."""
        fr, cell = emb.frame, emb.frame.size / region.shape[0]
        sx, sy = fr.scale_xy
        s = np.where(region, sim_fg.numpy(), -np.inf)
        y, x = np.unravel_index(int(np.argmax(s)), s.shape)
        h, w = fr.shape
        return Point(min(w - 1.0, (x + 0.5) * cell / sx), min(h - 1.0, (y + 0.5) * cell / sy), True)
