"""Several plausible segmentations per query: Tyche-TS, or test-time stochasticity.

* :class:`TycheBackend`: a Tyche-TS network draws ``K`` candidates in one pass (each with
  its own noise channel; the candidates interact through their mean).
* :class:`AugmentedSampler` (Tyche-IS): any deterministic backend run ``K`` times on random
  intensity augmentations of the query and supports and random support subsets.

Both return ``(K, N, H, W)`` probabilities; :mod:`fmseg.uncertainty` summarises them. A
Tyche backend given a calibration (a checkpoint's ``meta["calibration"]``, read by
:func:`fmseg.calibration.stored_calibration`) applies it to every candidate's probability.
"""

from __future__ import annotations

import numpy as np
import torch

from ..calibration import apply_calibration
from ..progress import Progress, Work
from ..window import WindowLike
from .backends import Backend, Supports, resize, stack_resized
from .segment import binary_supports, volume_queries
from .support import SupportSet


class TycheBackend(Backend):
    """Tyche-TS as an in-context backend; :meth:`predict` is the candidates' mean.

    Args:
        model: :class:`~fmseg.models.tyche.TycheTS` in eval mode.
        k: Candidates per query.
        size: Square input side (128).
        batch_images: Bound on ``queries x (supports + k)`` per forward pass.
        seed: Seed of the noise, so samples are reproducible.
        calibration: Applied to each candidate's probability (:mod:`fmseg.calibration`);
            None: the network's own probabilities.
    """

    name = "tyche"

    def __init__(
        self,
        model,
        k: int = 8,
        size: int = 128,
        batch_images: int = 96,
        seed: int = 0,
        calibration: dict | None = None,
    ):
        self.model, self.k, self.size = model.eval(), k, size
        self.batch_images, self.seed, self.calibration = batch_images, seed, calibration
        self.device = next(model.parameters()).device

    def prepare(self, supports: Supports) -> tuple[torch.Tensor, torch.Tensor]:
        """``(S, 1, s, s)`` resized support images and soft masks."""
        imgs = stack_resized(supports.images, self.size)[:, None].to(self.device)
        masks = stack_resized(supports.masks, self.size, mask=True)[:, None].to(self.device)
        return imgs, masks

    @torch.inference_mode()
    def sample(self, state, queries: np.ndarray, k: int | None = None) -> np.ndarray:
        """``(K, N, H, W)`` candidate probabilities (calibrated) for ``(N, H, W)`` queries."""
        k = k or self.k
        imgs, masks = state
        q = torch.as_tensor(np.asarray(queries, np.float32))
        shape = tuple(q.shape[-2:])
        x = resize(q, (self.size, self.size))[:, None].to(self.device)
        gen = torch.Generator().manual_seed(self.seed)
        out = torch.empty(k, len(x), self.size, self.size)
        step = max(1, self.batch_images // (len(imgs) + k))
        for i in range(0, len(x), step):
            xb = x[i : i + step]
            noise = torch.randn(len(xb), k, 1, self.size, self.size, generator=gen)
            si = imgs[None].expand(len(xb), -1, -1, -1, -1)
            sm = masks[None].expand(len(xb), -1, -1, -1, -1)
            logits = self.model(xb, si, sm, noise.to(self.device))
            out[:, i : i + step] = torch.sigmoid(logits).transpose(0, 1).cpu()
        flat = out.reshape(k * len(x), self.size, self.size)
        probs = resize(flat, shape).clamp(0, 1).reshape(k, len(x), *shape).numpy()
        return apply_calibration(probs, self.calibration)

    def predict(self, state, queries: np.ndarray, positions=None) -> np.ndarray:
        """Mean of the candidates, ``(N, H, W)``."""
        return self.sample(state, queries).mean(0)


def _augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random gamma, contrast and noise on [0, 1] images (one draw for the whole stack)."""
    gamma = float(np.exp(rng.uniform(-0.3, 0.3)))
    gain, bias = rng.uniform(0.9, 1.1), rng.uniform(-0.05, 0.05)
    out = np.clip(images, 0, 1) ** gamma * gain + bias
    out = out + rng.normal(0, rng.uniform(0, 0.02), out.shape)
    return np.clip(out, 0, 1).astype(np.float32)


class AugmentedSampler:
    """Tyche-IS: ``K`` runs of a deterministic backend on perturbed inputs.

    Args:
        backend: Any :class:`~fmseg.incontext.backends.Backend`.
        k: Samples.
        subset: Fraction of supports kept per sample (resampled; at least one).
        augment: Apply random intensity augmentation to query and supports.
        seed: Seed of the perturbations.
    """

    def __init__(
        self,
        backend: Backend,
        k: int = 8,
        subset: float = 0.75,
        augment: bool = True,
        seed: int = 0,
    ):
        self.backend, self.k, self.subset, self.augment, self.seed = (
            backend,
            k,
            subset,
            augment,
            seed,
        )
        self.name = f"{backend.name}+tta"

    def prepare(self, supports: Supports) -> Supports:
        """Supports are perturbed per sample, so nothing is precomputed."""
        return supports

    def sample(self, state: Supports, queries: np.ndarray, positions=None) -> np.ndarray:
        """``(K, N, H, W)`` sample probabilities."""
        rng = np.random.default_rng(self.seed)
        n = len(state.images)
        out = []
        for _ in range(self.k):
            keep = np.sort(rng.choice(n, size=max(1, round(self.subset * n)), replace=False))
            imgs = [state.images[i] for i in keep]
            q = queries
            if self.augment:
                imgs = [_augment(i, rng) for i in imgs]
                q = _augment(np.asarray(queries, np.float32), rng)
            pos = None if state.positions is None else tuple(state.positions[i] for i in keep)
            sub = Supports(tuple(imgs), tuple(state.masks[i] for i in keep), pos)
            if not any(np.any(m) for m in sub.masks):
                sub = state
            out.append(self.backend.predict(self.backend.prepare(sub), q, positions))
        return np.stack(out)

    def predict(self, state, queries: np.ndarray, positions=None) -> np.ndarray:
        """Mean of the samples."""
        return self.sample(state, queries, positions).mean(0)


def sample_slices_iter(
    sampler: TycheBackend | AugmentedSampler,
    support: SupportSet,
    queries: np.ndarray,
    label: int | None = None,
    positions=None,
    batch: int = 4,
) -> Work[np.ndarray]:
    """``(K, N, H, W)`` samples for normalised ``(N, H, W)`` queries, with progress.

    Args:
        sampler: A Tyche backend or a test-time sampler.
        support: The annotated slices.
        queries: Queries in [0, 1].
        label: The label value to segment (None: any non-zero label).
        positions: ``(source, axis, index)`` per query (for position-aware backends).
        batch: Queries per step.
    """
    queries = np.asarray(queries, np.float32)
    if queries.ndim != 3:
        raise ValueError(f"queries must be a stack (N, H, W), got shape {queries.shape}")
    state = sampler.prepare(binary_supports(support, label))
    parts = []
    yield Progress(0, len(queries), f"{sampler.name}: sampling")
    for i in range(0, len(queries), batch):
        pos = positions[i : i + batch] if positions is not None else None
        if isinstance(sampler, TycheBackend):
            parts.append(sampler.sample(state, queries[i : i + batch]))
        else:
            parts.append(sampler.sample(state, queries[i : i + batch], pos))
        yield Progress(min(i + batch, len(queries)), len(queries), "sampling")
    return np.concatenate(parts, axis=1)


def sample_volume_iter(
    sampler: TycheBackend | AugmentedSampler,
    support: SupportSet,
    volume: np.ndarray,
    axis: int = 0,
    window: WindowLike = None,
    label: int | None = None,
    slices: list[int] | None = None,
    batch: int = 4,
    source: str | None = None,
) -> Work[np.ndarray]:
    """``(K, *volume.shape)`` sample probabilities, slice by slice along ``axis``.

    Args:
        sampler: A Tyche backend or an augmented sampler.
        support: The annotated slices.
        volume: ``(D, H, W)`` raw intensities.
        axis: Slicing axis.
        window: Intensity window policy or ``(low, high)`` (None: the default policy).
        label: Label value to segment (None: any non-zero label).
        slices: Indices along ``axis`` to sample (None: all); others stay 0.
        batch: Queries per step.
        source: Identity of ``volume`` matching the supports' (see ``add_slice``).
    """
    moved, idx, queries, pos = volume_queries(volume, axis, window, slices, source)
    part = yield from sample_slices_iter(sampler, support, queries, label, pos, batch)
    full = np.zeros((part.shape[0], *moved.shape), np.float32)
    full[:, idx] = part
    return np.moveaxis(full, 1, axis + 1)
