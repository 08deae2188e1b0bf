"""Voxel index <-> world coordinates for every front end, in one place (pure numpy).

The core segments numpy arrays and speaks array indices only; front ends place prompts and
show results in world millimetres. The conventions:

* **ijk** is the voxel index order of VTK, ITK, NIfTI and NRRD (``i`` runs fastest in memory).
  Slicer's ``IJKToRAS`` matrix and nibabel's affine (:attr:`fmseg.io.Volume.affine`) both map
  homogeneous ``(i, j, k, 1)`` to world coordinates.
* **array index** is an index into the numpy array the core receives. Two orders occur:

  - ``"kji"``: ``slicer.util.arrayFromVolume`` returns ``(K, J, I)`` arrays, and the napari plugin
    shows files transposed, ``(z, y, x)`` = ``(k, j, i)``. Slicer and napari both feed the core
    ``kji`` arrays, so napari *data coordinates* are ``kji`` array indices.
  - ``"ijk"``: :func:`fmseg.io.load_volume` keeps file order, ``(X, Y, Z)`` = ``(i, j, k)``.

* Voxel centres sit at integer indices, in both Slicer and nibabel.
* **RAS** (right, anterior, superior) is the world of Slicer and nibabel; **LPS** is the world of
  DICOM, ITK and most NRRD files. One flips the other's first two axes.

A 2D slice is ``np.take(volume, index, axis)``; its prompts use ``x`` = column and ``y`` = row,
that is the later and the earlier of the two remaining array axes (:func:`slice_position`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Order = Literal["kji", "ijk"]

#: World normals (RAS) of the three standard slice views.
VIEW_NORMALS: dict[str, tuple[float, float, float]] = {
    "axial": (0.0, 0.0, 1.0),
    "coronal": (0.0, 1.0, 0.0),
    "sagittal": (1.0, 0.0, 0.0),
}

_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_REVERSE = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float
)  # (k, j, i, 1) -> (i, j, k, 1)


def check_affine(matrix: np.ndarray) -> np.ndarray:
    """A float ``(4, 4)`` copy of an invertible homogeneous affine.

    Raises:
        ValueError: Wrong shape, last row not ``(0, 0, 0, 1)``, non-finite or singular.
    """
    m = np.array(matrix, dtype=float)
    if m.shape != (4, 4):
        raise ValueError(f"an affine must be 4x4, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("the affine has non-finite entries")
    if not np.allclose(m[3], (0, 0, 0, 1)):
        raise ValueError(f"the affine's last row must be (0, 0, 0, 1), got {m[3]}")
    if abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise ValueError("the affine is singular (a zero spacing or parallel axes)")
    return m


def apply_affine(matrix: np.ndarray, points: np.ndarray | Sequence[float]) -> np.ndarray:
    """Map ``(3,)`` or ``(N, 3)`` points through a 4x4 affine; the shape is kept."""
    pts = np.asarray(points, dtype=float)
    if pts.shape[-1:] != (3,) or pts.ndim > 2:
        raise ValueError(f"points must be (3,) or (N, 3), got shape {pts.shape}")
    m = np.asarray(matrix, dtype=float)
    return pts @ m[:3, :3].T + m[:3, 3]


def ijk_to_world_matrix(
    origin: Sequence[float], spacing: Sequence[float], directions: np.ndarray | None = None
) -> np.ndarray:
    """The ``ijk`` -> world affine of an origin, a spacing and axis directions.

    Args:
        origin: World position of voxel ``(0, 0, 0)``.
        spacing: Voxel size along ``i``, ``j``, ``k``.
        directions: ``(3, 3)`` with the unit world direction of ``i``, ``j``, ``k`` as columns
            (identity when None).
    """
    d = np.eye(3) if directions is None else np.asarray(directions, dtype=float)
    m = np.eye(4)
    m[:3, :3] = d * np.asarray(spacing, dtype=float)[None, :]
    m[:3, 3] = origin
    return check_affine(m)


def array_to_world_matrix(ijk_to_world: np.ndarray, order: Order = "kji") -> np.ndarray:
    """The affine taking array indices of the given ``order`` to world coordinates."""
    m = check_affine(ijk_to_world)
    if order == "ijk":
        return m
    if order == "kji":
        return m @ _REVERSE
    raise ValueError(f"order must be 'kji' or 'ijk', got {order!r}")


def array_to_world(points, ijk_to_world: np.ndarray, order: Order = "kji") -> np.ndarray:
    """World coordinates of ``(3,)`` or ``(N, 3)`` array indices (fractional ones allowed)."""
    return apply_affine(array_to_world_matrix(ijk_to_world, order), points)


def world_to_array(points, ijk_to_world: np.ndarray, order: Order = "kji") -> np.ndarray:
    """Fractional array indices of ``(3,)`` or ``(N, 3)`` world points."""
    return apply_affine(np.linalg.inv(array_to_world_matrix(ijk_to_world, order)), points)


def array_spacing(ijk_to_world: np.ndarray, order: Order = "kji") -> tuple[float, float, float]:
    """Voxel size along each array axis (norms of the affine's columns), e.g. for a Session."""
    cols = np.linalg.norm(array_to_world_matrix(ijk_to_world, order)[:3, :3], axis=0)
    return float(cols[0]), float(cols[1]), float(cols[2])


def ras_to_lps(points) -> np.ndarray:
    """Points in LPS from points in RAS (flip the first two axes); its own inverse."""
    return apply_affine(_RAS_LPS, points)


def lps_to_ras(points) -> np.ndarray:
    """Points in RAS from points in LPS."""
    return apply_affine(_RAS_LPS, points)


def affine_lps_to_ras(matrix: np.ndarray) -> np.ndarray:
    """An affine whose output is LPS (ITK, DICOM, NRRD) turned into one whose output is RAS."""
    return _RAS_LPS @ check_affine(matrix)


def affine_ras_to_lps(matrix: np.ndarray) -> np.ndarray:
    """An affine whose output is RAS turned into one whose output is LPS."""
    return _RAS_LPS @ check_affine(matrix)


def slice_axis(ijk_to_world: np.ndarray, normal, order: Order = "kji") -> int:
    """The array axis whose world direction is most nearly parallel to ``normal``.

    For an oblique volume this is the axis to slice along to show (approximately) the view
    with that normal; e.g. ``slice_axis(m, VIEW_NORMALS["axial"])`` is 0 for a usual axial CT
    in ``kji`` order.

    Args:
        ijk_to_world: Voxel -> world affine.
        normal: World direction (RAS when the affine outputs RAS), or a :data:`VIEW_NORMALS` key.
        order: Array index order.
    """
    if isinstance(normal, str):
        if normal not in VIEW_NORMALS:
            raise ValueError(f"unknown view {normal!r}; known: {', '.join(VIEW_NORMALS)}")
        normal = VIEW_NORMALS[normal]
    n = np.asarray(normal, dtype=float)
    if n.shape != (3,) or not np.linalg.norm(n) > 0:
        raise ValueError(f"normal must be a non-zero 3-vector, got {normal}")
    dirs = array_to_world_matrix(ijk_to_world, order)[:3, :3]
    cosines = np.abs(n @ dirs) / (np.linalg.norm(dirs, axis=0) * np.linalg.norm(n))
    return int(np.argmax(cosines))


def slice_position(points, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Where array-index points fall on slices ``np.take(volume, index, axis)``.

    Args:
        points: ``(N, 3)`` (or ``(3,)``) fractional array indices.
        axis: Slicing axis (0, 1 or 2).

    Returns:
        ``(index, xy)``: the nearest slice index of each point, ``(N,)`` int, and its
        ``(N, 2)`` in-slice position ``(x, y)`` = (column, row) as the core's prompts use them.
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    pts = np.atleast_2d(np.asarray(points, dtype=float))
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be (3,) or (N, 3), got shape {np.shape(points)}")
    row_axis, col_axis = (a for a in range(3) if a != axis)
    index = np.rint(pts[:, axis]).astype(int)
    return index, np.column_stack([pts[:, col_axis], pts[:, row_axis]])


def napari_data_to_world(data, scale, translate=None) -> np.ndarray:
    """World coordinates of napari layer data coordinates: ``data * scale + translate``.

    Only a layer's scale and translate are taken into account (no rotate, shear or affine),
    which is what the napari plugin sets.
    """
    d = np.asarray(data, dtype=float)
    t = np.zeros(d.shape[-1]) if translate is None else np.asarray(translate, dtype=float)
    return d * np.asarray(scale, dtype=float) + t


def napari_world_to_data(world, scale, translate=None) -> np.ndarray:
    """Napari layer data coordinates of world coordinates (see :func:`napari_data_to_world`)."""
    w = np.asarray(world, dtype=float)
    t = np.zeros(w.shape[-1]) if translate is None else np.asarray(translate, dtype=float)
    return (w - t) / np.asarray(scale, dtype=float)
