"""Batches for the trainer: 2D slices (SAM family) and 3D patches (volumetric networks).

A feeder splits the annotated slices into training and validation, precomputes whatever the
frozen part of the network would compute on every step (image embeddings, encoder outputs or
final features) in ``prepare()``, a generator yielding progress, then serves batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..progress import Progress, Work
from .bases import SamAdapted, VolumeAdapted, crop_levels
from .data import SliceSample, VolumeSample
from .embed_store import embedder_of


def split_indices(n: int, fraction: float, gen: torch.Generator) -> tuple[list[int], list[int]]:
    """Random train/validation split of ``n`` items; no validation below 3 items."""
    order = torch.randperm(n, generator=gen).tolist()
    n_val = int(round(n * fraction)) if n >= 3 else 0
    n_val = min(max(n_val, 1 if n >= 3 and fraction > 0 else 0), n - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


class SliceFeeder:
    """Batches of 2D slices for a :class:`SamAdapted` model.

    Args:
        model: The adapted model (its ``cacheable`` decides whether embeddings are cached).
        samples: Annotated slices (see :func:`fmseg.adapters.data.slice_samples`).
        val_fraction: Share held out for validation.
        augment: Box jitter (cached) or also intensity jitter (encoder trained).
        seed: Split seed.
        embeddings: Shared ``id(sample) -> (C, h, w)`` embedding cache (e.g. across runs of a
            benchmark on the same samples); filled here when the encoder is frozen.
        disk_cache: Keep the embeddings of these slices on disk by content hash and reuse
            them in later runs (see :mod:`fmseg.adapters.embed_store`).
    """

    def __init__(
        self,
        model: SamAdapted,
        samples: Sequence[SliceSample],
        val_fraction: float = 0.2,
        augment: bool = True,
        seed: int = 0,
        embeddings: dict[int, torch.Tensor] | None = None,
        disk_cache: bool = True,
    ) -> None:
        if model.head_kind == "box":
            samples = [s for s in samples if s.box is not None]
        if not samples:
            raise ValueError("no annotated slice contains the structure: nothing to train on")
        self.model, self.augment = model, augment
        train, val = split_indices(len(samples), val_fraction, torch.Generator().manual_seed(seed))
        self.train = [samples[i] for i in train]
        self.val = [samples[i] for i in val]
        self.embeddings = {} if embeddings is None else embeddings
        self.use_cache = model.cacheable
        self.disk_cache = disk_cache
        self._val_batches: list[dict] | None = None  # built once, after prepare()

    def prepare(self) -> Work[None]:
        """Embed every slice once when the encoder is frozen (yields progress).

        Embeddings come from the model's content-hash cache (memory, then disk) when these
        exact slices were embedded before; the encoder runs only on the others.
        """
        if not self.use_cache:
            return
        todo = [s for s in self.train + self.val if id(s) not in self.embeddings]
        if not todo:
            return
        embed = embedder_of(self.model, self.disk_cache)
        for i, s in enumerate(todo):
            self.embeddings[id(s)] = embed(s.image[None], persist=self.disk_cache)[0]
            yield Progress(i + 1, len(todo), "embedding annotated slices")

    def _collate(self, samples: Sequence[SliceSample], gen: torch.Generator | None) -> dict:
        dev = self.model.device
        batch = {
            "target": torch.stack([s.target for s in samples]).to(dev),
            "weight": torch.stack([s.weight for s in samples]).to(dev),
        }
        if self.use_cache:
            batch["embedding"] = torch.stack([self.embeddings[id(s)] for s in samples])
        else:
            img = torch.stack([s.image for s in samples])
            if gen is not None and self.augment:
                scale = 1 + 0.2 * (torch.rand(len(samples), 1, 1, 1, generator=gen) - 0.5)
                img = (img * scale).clamp(0, 1)
            batch["image"] = img.to(dev)
        if self.model.head_kind == "box":
            boxes = torch.stack([s.box for s in samples])
            if gen is not None and self.augment:
                boxes = boxes + torch.randint(-4, 5, boxes.shape, generator=gen).float()
            batch["box"] = boxes.clamp(0, self.model.net.img_size - 1).to(dev)
        return batch

    def batch(self, size: int, gen: torch.Generator) -> dict:
        """A random training batch of ``size`` slices (with replacement)."""
        idx = torch.randint(len(self.train), (size,), generator=gen).tolist()
        return self._collate([self.train[i] for i in idx], gen)

    def validation_batches(self) -> list[dict]:
        """The held-out slices in batches of 8 (empty list without validation)."""
        if self._val_batches is None:
            val = self.val
            self._val_batches = [self._collate(val[i : i + 8], None) for i in range(0, len(val), 8)]
        return self._val_batches


class VolumeFeeder:
    """Random 3D patches of annotated volumes for a :class:`VolumeAdapted` model.

    Validation holds out a share of the annotated slices (their voxels get weight 0 in
    training) and evaluates on patches centred on them. Cached tensors: final features when
    the whole base network is frozen, encoder outputs when only the encoder is.
    """

    def __init__(
        self,
        model: VolumeAdapted,
        samples: Sequence[VolumeSample],
        axis: int = 0,
        patch: int = 64,
        val_fraction: float = 0.2,
        augment: bool = True,
        seed: int = 0,
        multiple: int = 16,
        cache: dict | None = None,
    ) -> None:
        if patch % multiple:
            raise ValueError(f"patch side must be a multiple of {multiple}, got {patch}")
        self.model, self.axis, self.patch, self.augment = model, axis, patch, augment
        self.multiple = multiple
        gen = torch.Generator().manual_seed(seed)
        self.train, self.val = [], []
        for s in samples:
            tr, va = self._split(s, val_fraction, gen)
            self.train.append(tr)
            self.val += va
        self.cache: dict = {} if cache is None else cache  # (id(image), kind) -> tensors
        self.kind: str | None = None  # "features", "levels" or None (set by prepare)
        self._pools: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._val_batches: list[dict] | None = None  # built once, after prepare()

    def _split(self, s: VolumeSample, fraction: float, gen) -> tuple[VolumeSample, list]:
        dims = [d for d in range(3) if d != self.axis]
        known = s.weight[0].amax(dim=dims).nonzero().flatten().tolist()
        if len(known) >= s.weight.shape[1 + self.axis]:  # fully annotated volume
            return s, []
        tr, va = split_indices(len(known), fraction, gen)
        train_w = s.weight.clone()
        for i in va:
            train_w[0].select(self.axis, known[i]).zero_()
        train = VolumeSample(s.image, s.target, train_w)
        return train, [(s, known[i]) for i in va]

    def prepare(self) -> Work[None]:
        """Cache frozen features / encoder outputs of each training volume."""
        m = self.model
        vols = {id(s.image): s.image for s in self.train}
        vols.update({id(s.image): s.image for s, _ in self.val})
        if m.frozen_net:
            self.kind = "features"
        elif m.cacheable and hasattr(m.net, "encode"):
            self.kind = "levels"
        else:
            return  # the encoder trains: every step runs on image crops
        todo = [(k, v) for k, v in vols.items() if (k, self.kind) not in self.cache]
        with torch.no_grad():
            for i, (key, img) in enumerate(todo):
                x = img[None].to(m.device)
                out = m.net.features(x) if m.frozen_net else m.net.encode(x)
                self.cache[key, self.kind] = out
                yield Progress(i + 1, len(todo), "encoding annotated volumes")

    def _sizes(self, s: VolumeSample) -> list[int]:
        return [min(self.patch, n) for n in s.image.shape[1:]]

    def _corner(self, s: VolumeSample, centre: Sequence[int]) -> list[int]:
        """Patch corner near ``centre``, on the network's stride grid (cached levels align)."""
        out, g = [], self.multiple
        for c, n, p in zip(centre, s.image.shape[1:], self._sizes(s), strict=True):
            out.append(int(min(max(0, (int(c) - p // 2) // g * g), n - p)))
        return out

    def _crop(self, s: VolumeSample, corner: Sequence[int], weight: torch.Tensor) -> dict:
        sl = (slice(None), *(slice(c, c + p) for c, p in zip(corner, self._sizes(s), strict=False)))
        batch = {"target": s.target[sl][None], "weight": weight[sl][None]}
        cached = self.cache.get((id(s.image), self.kind))
        if cached is None:
            batch["image"] = s.image[sl][None]
        elif torch.is_tensor(cached):
            batch["features"] = cached[sl[:1] + sl]
        else:
            batch["levels"] = crop_levels(cached, s.image.shape[1:], corner, self._sizes(s))
        return batch

    def _centre(self, s: VolumeSample, gen: torch.Generator) -> list[int]:
        """A random annotated voxel: a foreground one 70 % of the time (when there is one)."""
        if id(s) not in self._pools:  # voxel lists computed once per volume, not every step
            known = s.weight[0] > 0
            self._pools[id(s)] = ((known & (s.target[0] > 0)).nonzero(), known.nonzero())
        fg, known = self._pools[id(s)]
        idx = known if len(fg) == 0 or torch.rand(1, generator=gen).item() > 0.7 else fg
        return idx[torch.randint(len(idx), (1,), generator=gen).item()].tolist()

    def batch(self, size: int, gen: torch.Generator) -> dict:
        """``size`` random patches of one random training volume, foreground-biased."""
        s = self.train[torch.randint(len(self.train), (1,), generator=gen).item()]
        crops = [
            self._crop(s, self._corner(s, self._centre(s, gen)), s.weight) for _ in range(size)
        ]
        batch = _cat(crops)
        if self.augment and "image" in batch:
            dim = torch.randint(2, 5, (1,), generator=gen).item()
            batch = {k: v.flip(dim) for k, v in batch.items()}
        return batch

    def validation_batches(self) -> list[dict]:
        """One patch per held-out slice, scored on that slice only (built once)."""
        if self._val_batches is None:
            self._val_batches = self._build_validation()
        return self._val_batches

    def _build_validation(self) -> list[dict]:
        out = []
        for s, j in self.val:
            w = torch.zeros_like(s.weight)
            w[0].select(self.axis, j).copy_(s.weight[0].select(self.axis, j))
            fg = (s.target[0] * w[0]).nonzero()
            centre = (
                fg.float().mean(0).tolist()
                if len(fg)
                else (w[0].nonzero().float().mean(0).tolist())
            )
            out.append(self._crop(s, self._corner(s, centre), w))
        return out


def _cat(crops: list[dict]) -> dict:
    batch = {}
    for k in crops[0]:
        if k == "levels":
            batch[k] = [torch.cat(ts) for ts in zip(*(c[k] for c in crops), strict=False)]
        else:
            batch[k] = torch.cat([c[k] for c in crops])
    return batch
