"""Helpers shared by the converters: reading NIfTI, geometry, down-sampling, making records.

Every image is brought to the closest canonical (RAS+) orientation and, where a side is longer
than :data:`MAX_SIDE` voxels, down-sampled (labels by nearest neighbour).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from .record import Record
from .sources import SOURCES
from .splits import held_out_concept

MAX_SIDE = 256
CT_WINDOW = (-160.0, 240.0)


def load_nifti(path: Path, canonical: bool = True):
    """``(array, affine)`` of a NIfTI file, reoriented to RAS+ when ``canonical``."""
    import nibabel as nib

    img = nib.load(str(path))
    if canonical:
        img = nib.as_closest_canonical(img)
    return np.asanyarray(img.dataobj), img.affine


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm from an affine."""
    return tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(0)))


def shrink(image, labels, spacing):
    """Down-sample the sides longer than :data:`MAX_SIDE` (image linear, labels nearest)."""
    zoom = [min(1.0, MAX_SIDE / n) for n in labels.shape]
    if min(zoom) == 1.0:
        return image, labels, spacing
    labels = ndimage.zoom(labels, zoom, order=0)
    if image is not None:
        image = ndimage.zoom(image.astype(np.float32), zoom, order=1)
    return image, labels, tuple(s / z for s, z in zip(spacing, zoom, strict=True))


def resample_to(array: np.ndarray, affine: np.ndarray, grid_affine, grid_shape, order: int):
    """``array`` (world ``affine``) resampled onto a grid (``grid_affine``, ``grid_shape``)."""
    vox = np.linalg.inv(affine) @ grid_affine
    return ndimage.affine_transform(
        array, vox[:3, :3], vox[:3, 3], output_shape=tuple(grid_shape), order=order, cval=0
    )


def excluded_by_name(names: dict[int, str]) -> tuple[int, ...]:
    """Label values whose names belong to a held-out concept."""
    return tuple(sorted(v for v, n in names.items() if held_out_concept(n)))


def make_record(rid, source, subject, modality, labels, image, affine, names, **kw) -> Record:
    """A record with held-out names excluded, shrunk to :data:`MAX_SIDE`."""
    image, labels, spacing = shrink(image, labels, spacing_of(affine))
    present = set(np.unique(labels).tolist())
    names = {v: n for v, n in names.items() if v in present and v > 0}
    excluded = set(excluded_by_name(names)) | set(kw.pop("excluded", ()))
    return Record(
        id=rid,
        source=source,
        subject=subject,
        modality=modality,
        labels=labels.astype(np.int16),
        image=None if image is None else image.astype(np.float32),
        spacing=spacing,
        names=names,
        licence=SOURCES[source].licence,
        excluded=tuple(sorted(excluded & set(names))),
        **kw,
    )
