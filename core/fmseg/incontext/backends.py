"""In-context backends behind one interface: supports in, query probabilities out.

Every backend takes the support slices of *one* structure (images in [0, 1], boolean masks,
optional slice positions) through :meth:`Backend.prepare`, then segments batches of query
slices with :meth:`Backend.predict`. Multi-label handling, volumes and progress live in
:mod:`fmseg.incontext.segment`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

Position = tuple[str, int, int]  # (source, axis, index)


@dataclass(frozen=True)
class Supports:
    """The support slices of one structure.

    Attributes:
        images: ``S`` arrays ``(H_i, W_i)`` float32 in [0, 1].
        masks: ``S`` boolean arrays of the same shapes.
        positions: ``S`` ``(source, axis, index)`` or None when unknown.
    """

    images: tuple[np.ndarray, ...]
    masks: tuple[np.ndarray, ...]
    positions: tuple[Position, ...] | None = None

    def __post_init__(self):
        if not self.images:
            raise ValueError("the support set is empty: add at least one annotated slice")
        if len(self.images) != len(self.masks):
            raise ValueError(f"{len(self.images)} support images but {len(self.masks)} masks")
        for i, (img, m) in enumerate(zip(self.images, self.masks, strict=True)):
            if img.shape != m.shape:
                raise ValueError(f"support {i}: image {img.shape} and mask {m.shape} differ")
        if not any(np.any(m) for m in self.masks):
            raise ValueError("every support mask is empty: nothing to learn the structure from")


class Backend(ABC):
    """An in-context segmenter: ``prepare`` once per support set, ``predict`` per batch."""

    name: str = "backend"

    @abstractmethod
    def prepare(self, supports: Supports) -> object:
        """Precompute whatever the backend needs from the supports (features, windows...)."""

    @abstractmethod
    def predict(
        self, state: object, queries: np.ndarray, positions: list[Position] | None = None
    ) -> np.ndarray:
        """Segment ``(N, H, W)`` queries in [0, 1]; returns ``(N, H, W)`` float32 probabilities."""


def resize(x: torch.Tensor, size: tuple[int, int], mask: bool = False) -> torch.Tensor:
    """Resize ``(N, H, W)`` images (antialiased bilinear) or masks (area, soft)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    mode = "area" if mask else "bilinear"
    kw = {} if mask else {"antialias": True, "align_corners": False}
    return F.interpolate(x[:, None].float(), size, mode=mode, **kw)[:, 0]


def stack_resized(arrays, size: int, mask: bool = False) -> torch.Tensor:
    """``S`` ``(H_i, W_i)`` arrays -> one ``(S, size, size)`` float32 tensor."""
    return torch.cat(
        [
            resize(torch.as_tensor(np.asarray(a, np.float32))[None], (size, size), mask)
            for a in arrays
        ]
    )


class UniverSegBackend(Backend):
    """A UniverSeg-type network (the reference v1 or fmseg's own small one).

    Args:
        model: :class:`~fmseg.models.universeg.UniverSeg` in eval mode.
        size: Square input side (128 for every published/shipped model).
        ensemble: Least number of support subsets averaged (1: all supports at once).
        subset: Supports per ensemble member (None: all of them). With more supports than
            ``subset``, the members first partition the supports (so all are used), then
            random subsets are added up to ``ensemble`` members.
        batch_images: Bound on ``queries x supports`` per forward pass (memory).
        seed: Seed of the subset sampling, so results are reproducible.
    """

    name = "universeg"

    def __init__(
        self,
        model: torch.nn.Module,
        size: int = 128,
        ensemble: int = 1,
        subset: int | None = None,
        batch_images: int = 64,
        seed: int = 0,
    ):
        self.model, self.size = model.eval(), size
        self.ensemble, self.subset = max(1, ensemble), subset
        self.batch_images, self.seed = batch_images, seed
        self.device = next(model.parameters()).device

    def prepare(self, supports: Supports) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One ``((S', 1, s, s) images, (S', 1, s, s) masks)`` pair per ensemble member."""
        imgs = stack_resized(supports.images, self.size)[:, None].to(self.device)
        masks = stack_resized(supports.masks, self.size, mask=True)[:, None].to(self.device)
        n = len(imgs)
        k = n if self.subset is None else min(self.subset, n)
        if self.ensemble == 1 and k == n:
            return [(imgs, masks)]
        rng = np.random.default_rng(self.seed)
        # first members: a random partition, so every support is used; then random subsets
        perm = rng.permutation(n)
        chunks = [perm[i : i + k] for i in range(0, n, k)]
        if len(chunks[-1]) < k:
            rest = np.setdiff1d(np.arange(n), chunks[-1])
            chunks[-1] = np.r_[chunks[-1], rng.choice(rest, k - len(chunks[-1]), replace=False)]
        while len(chunks) < self.ensemble:
            chunks.append(rng.choice(n, size=k, replace=False))
        members = []
        for c in chunks:
            idx = torch.from_numpy(np.sort(c))
            members.append((imgs[idx], masks[idx]))
        return members

    @torch.inference_mode()
    def predict(self, state, queries: np.ndarray, positions=None) -> np.ndarray:
        """Average of the members' sigmoid outputs, resized back to the query size."""
        q = torch.as_tensor(np.asarray(queries, np.float32))
        shape = tuple(q.shape[-2:])
        x = resize(q, (self.size, self.size))[:, None].to(self.device)
        prob = torch.zeros(len(x), 1, self.size, self.size, device=self.device)
        for imgs, masks in state:
            step = max(1, self.batch_images // len(imgs))
            for i in range(0, len(x), step):
                xb = x[i : i + step]
                si = imgs[None].expand(len(xb), -1, -1, -1, -1)
                sm = masks[None].expand(len(xb), -1, -1, -1, -1)
                prob[i : i + step] += torch.sigmoid(self.model(xb, si, sm))
        prob = prob[:, 0].cpu() / len(state)
        return resize(prob, shape).clamp(0, 1).numpy()
