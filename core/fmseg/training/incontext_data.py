"""Episodic tasks for meta-training in-context models, from real labelled data and shapes.

A *task* is one structure seen along one axis of one volume (a stack of ``(128, 128)``
image slices with binary masks); an *episode* draws ``S`` support slices and one query from
it. Sources (see ``docs/incontext.md`` for the split):

* Colin27 T1 + AAL: every structure except :data:`HELD_OUT_AAL`, along all three axes, plus
  the brain mask and left+right unions;
* LiTS-117: liver and tumour in the training half (array axis 0 index < 64), along all axes;
* synthetic shapes: random blobs whose target class is set by intensity and size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..incontext.support import normalise
from .splits import HELD_OUT_AAL, LITS_SPLIT  # axis 0 < 64 train, >= 64 evaluation

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
SIZE = 128
LITS_WINDOW = (-160.0, 240.0)


@dataclass
class Task:
    """One structure along one axis: ``images`` ``(N, S, S)`` float32, ``masks`` bool."""

    name: str
    images: torch.Tensor
    masks: torch.Tensor

    def __post_init__(self):
        area = self.masks.flatten(1).sum(1)
        self.present = torch.nonzero(area >= 8).flatten()
        lo, hi = (int(self.present.min()), int(self.present.max())) if len(self.present) else (0, 0)
        near = torch.arange(max(0, lo - 3), min(len(area), hi + 4))
        self.absent = near[area[near] == 0]


def resize_stack(stack: np.ndarray, mode: str) -> torch.Tensor:
    """``(N, H, W)`` -> ``(N, SIZE, SIZE)`` (``bilinear`` images, ``nearest`` labels)."""
    t = torch.from_numpy(np.ascontiguousarray(stack)).float()[:, None]
    kw = {"antialias": True, "align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t, (SIZE, SIZE), mode=mode, **kw)[:, 0]


def axis_stacks(image: np.ndarray, labels: np.ndarray):
    """Yield ``(axis, images, labels)`` resized stacks for the three array axes."""
    for axis in range(3):
        img = np.moveaxis(image, axis, 0)
        lab = np.moveaxis(labels, axis, 0)
        yield axis, resize_stack(img, "bilinear"), resize_stack(lab, "nearest").to(torch.int16)


def aal_tasks(data: Path = DATA, held_out: bool = False) -> list[Task]:
    """AAL structures on Colin27 (training structures, or only the held-out ones)."""
    import nibabel as nib

    t1 = np.asarray(nib.load(data / "colin27_ch2.nii.gz").dataobj, dtype=np.float32)
    aal = np.asarray(nib.load(data / "colin27_aal.nii.gz").dataobj).astype(np.int16)
    brain = np.asarray(nib.load(data / "colin27_ch2bet.nii.gz").dataobj) > 0
    t1 = normalise(t1)
    keep = set(HELD_OUT_AAL) if held_out else set(range(1, 117)) - set(HELD_OUT_AAL)
    tasks = []
    for axis, imgs, labs in axis_stacks(t1, aal):
        for v in sorted(keep):
            tasks.append(Task(f"aal{v}_a{axis}", imgs, labs == v))
        if not held_out:
            for v in range(1, 116, 2):  # AAL pairs odd (left) / even (right)
                if v in keep and v + 1 in keep:
                    tasks.append(
                        Task(f"aal{v}+{v + 1}_a{axis}", imgs, (labs == v) | (labs == v + 1))
                    )
    if not held_out:
        for axis, imgs, labs in axis_stacks(t1, brain.astype(np.int16)):
            tasks.append(Task(f"brain_a{axis}", imgs, labs > 0))
    return [t for t in tasks if len(t.present) >= 4]


def lits_volume(data: Path = DATA) -> tuple[np.ndarray, np.ndarray]:
    """LiTS-117 CT normalised with the liver window, and its label map."""
    import nibabel as nib

    ct = np.asarray(nib.load(data / "lits117_ct.nii.gz").dataobj, dtype=np.float32)
    lab = np.asarray(nib.load(data / "lits117_labels.nii.gz").dataobj).astype(np.int16)
    return normalise(ct, LITS_WINDOW), lab


def lits_tasks(data: Path = DATA) -> list[Task]:
    """Liver and tumour in the training half of LiTS-117, along all three axes."""
    ct, lab = lits_volume(data)
    ct, lab = ct[:LITS_SPLIT], lab[:LITS_SPLIT]
    tasks = []
    for axis, imgs, labs in axis_stacks(ct, lab):
        tasks.append(Task(f"liver_a{axis}", imgs, labs > 0))
        tasks.append(Task(f"tumour_a{axis}", imgs, labs == 2))
    return [t for t in tasks if len(t.present) >= 4]


def synthetic_task(rng: np.random.Generator, n: int) -> Task:
    """``n`` slices of random blobs; the target is the blob class with a drawn intensity."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    target_level = rng.uniform(0.2, 1.0)
    size = rng.uniform(6, 28)
    imgs, masks = [], []
    for _ in range(n):
        img = torch.full((SIZE, SIZE), float(rng.uniform(0, 0.3)))
        mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        for k in range(int(rng.integers(3, 7))):
            cy, cx = rng.uniform(16, SIZE - 16, 2)
            ry, rx = size * rng.uniform(0.6, 1.4, 2) if k == 0 else rng.uniform(4, 30, 2)
            theta = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u = (dx * np.cos(theta) + dy * np.sin(theta)) / rx
            v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ry
            blob = u**2 + v**2 <= 1
            level = target_level if k == 0 else rng.uniform(0, 1)
            if k and abs(level - target_level) < 0.15:
                level = (target_level + 0.5) % 1.0
            img[blob] = float(level)
            mask = (mask | blob) if k == 0 else (mask & ~blob)
        img = img + torch.randn(SIZE, SIZE) * float(rng.uniform(0, 0.08))
        imgs.append(img.clamp(0, 1))
        masks.append(mask)
    return Task("synthetic", torch.stack(imgs), torch.stack(masks))


def sample_episode(task: Task, n_support: int, rng: np.random.Generator, empty_p: float = 0.1):
    """``(S, 1, H, W)`` support images/masks and a ``(1, H, W)`` query image/mask."""
    use_empty = len(task.absent) > 0 and rng.random() < empty_p
    pool = task.present.numpy()
    idx = rng.choice(pool, size=min(len(pool), n_support + (0 if use_empty else 1)), replace=False)
    if use_empty:
        q = int(rng.choice(task.absent.numpy()))
    else:
        q, idx = int(idx[-1]), idx[:-1]
    if len(idx) == 0:  # a task with one usable slice (e.g. synthetic): support = query slice
        idx = np.array([q])
    idx = rng.choice(idx, size=n_support, replace=len(idx) < n_support)
    si, sm = task.images[idx][:, None], task.masks[idx][:, None].float()
    return si, sm, task.images[q][None], task.masks[q][None].float()
