"""Input checks with messages that name the problem."""

from __future__ import annotations

import numpy as np


def check_volume(volume: np.ndarray) -> np.ndarray:
    """Validate an image for segmentation and return it as a numpy array.

    Raises:
        ValueError: Not 2D/3D (RGB and 4D data are named as such), non-numeric, NaN/inf
            values, or a constant image.
    """
    arr = np.asarray(volume)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and min(arr.shape[:2]) > 4:
        raise ValueError(
            f"image of shape {arr.shape} looks like RGB(A); convert it to one channel first"
        )
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"expected a 2D (H, W) or 3D (D, H, W) image, got {arr.ndim}D data of shape "
            f"{arr.shape}; pick one channel/time point first"
        )
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"image must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise ValueError(f"image has {bad} NaN/inf voxels; replace them before segmenting")
    if arr.size == 0 or arr.min() == arr.max():
        raise ValueError("image is constant (every voxel has the same value): nothing to segment")
    return arr


def check_label_value(label: int, dtype: np.dtype) -> int:
    """A positive label value that fits the labels array's dtype."""
    label = int(label)
    if label < 1 or label > np.iinfo(dtype).max:
        raise ValueError(f"label value must be between 1 and {np.iinfo(dtype).max}, got {label}")
    return label


def check_slices(indices, shape: tuple[int, ...], axis: int) -> None:
    """Raise ``ValueError`` naming the first slice index outside ``0..shape[axis] - 1``."""
    n = shape[axis]
    for i in indices:
        if not 0 <= i < n:
            raise ValueError(f"slice {i} is outside 0..{n - 1} along axis {axis}")
