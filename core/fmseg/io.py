"""Reading and writing medical volumes (NIfTI and NRRD; DICOM series are read too).

Arrays are kept in file order (``x, y, z`` for NIfTI, the NRRD axis order for NRRD) and the
geometry is always expressed as a 4x4 voxel-to-world affine in RAS+ millimetres, the nibabel
convention. NRRD files in LPS space are converted on read and written back in LPS. A DICOM
series (a folder, or one ``.dcm`` file of it) is read by :mod:`fmseg.dicom` in
``(column, row, slice)`` order with its RAS+ affine; outputs are NIfTI or NRRD.

Writes are atomic: the data go to a temporary file in the destination folder, which then replaces
the destination in one ``os.replace`` call, so a failed write never leaves a half-written file;
the file gets the usual mode (``0o666`` less the umask).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np

from .dicom import is_dicom, load_dicom_series

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "Volume",
    "VolumeNotFoundError",
    "load_volume",
    "save_labels",
    "save_volume",
    "volume_format",
    "write_atomic",
]

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd")

# NRRD space names (and their common abbreviations) whose first two axes point the opposite way
# to RAS: for these the world coordinates are mirrored by diag(-1, -1, 1) (LPS) or
# diag(-1, 1, 1) (LAS).
_LPS = np.diag([-1.0, -1.0, 1.0])
_SPACE_TO_RAS: dict[str, np.ndarray] = {
    "left-posterior-superior": _LPS,
    "lps": _LPS,
    "left-anterior-superior": np.diag([-1.0, 1.0, 1.0]),
    "las": np.diag([-1.0, 1.0, 1.0]),
    "right-anterior-superior": np.eye(3),
    "ras": np.eye(3),
}


class VolumeNotFoundError(FileNotFoundError, ValueError):
    """Raised when a volume file does not exist (both a FileNotFoundError and a ValueError)."""


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image with its geometry.

    Attributes:
        array: Voxel values in file order (``x, y, z`` for NIfTI), shape ``(X, Y, Z)``.
        affine: 4x4 voxel-index-to-world matrix, world in RAS+ millimetres (nibabel convention).
        spacing: Voxel size in millimetres along each array axis (column norms of the affine).
        path: The file the volume was read from, or ``None`` for an in-memory volume.
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    path: Path | None = None


def volume_format(path: str | os.PathLike[str]) -> str:
    """Return the supported extension a path ends with.

    Args:
        path: File name or path.

    Returns:
        One of ``SUPPORTED_EXTENSIONS`` (``".nii.gz"``, ``".nii"``, ``".nrrd"``).

    Raises:
        ValueError: If the extension is not supported.
    """
    name = Path(path).name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if name.endswith(ext):
            return ext
    raise ValueError(
        f"Unsupported file type for {str(path)!r}: expected one of "
        f"{', '.join(SUPPORTED_EXTENSIONS)}"
    )


def _spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    norms = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    return (float(norms[0]), float(norms[1]), float(norms[2]))


def _check_affine(affine: np.ndarray) -> np.ndarray:
    aff = np.asarray(affine, dtype=float)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be a 4x4 matrix, got shape {aff.shape}")
    if not np.all(np.isfinite(aff)):
        raise ValueError("affine contains NaN or infinite values")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise ValueError("affine is singular (zero voxel size or collinear axes)")
    return aff


def _as_3d(array: np.ndarray, path: Path) -> np.ndarray:
    """Drop trailing singleton axes beyond the third and require exactly three dimensions."""
    shape = array.shape
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        kind = f"{len(shape)}D"
        raise ValueError(
            f"{path}: expected a 3D volume, got {kind} data of shape {shape}"
            + (" (time series or multi-channel data are not supported)" if len(shape) > 3 else "")
        )
    return array


def _check_finite(array: np.ndarray, path: Path) -> None:
    if not np.issubdtype(array.dtype, np.floating):
        return
    n_nan = int(np.count_nonzero(np.isnan(array)))
    n_inf = int(np.count_nonzero(np.isinf(array)))
    if n_nan or n_inf:
        raise ValueError(
            f"{path}: contains {n_nan} NaN and {n_inf} infinite voxel(s) out of {array.size}; "
            "replace them before segmenting"
        )


def _nrrd_affine(header: dict) -> np.ndarray:
    """Build a RAS affine from an NRRD header (space directions, space origin, space)."""
    affine = np.eye(4)
    directions = header.get("space directions")
    if directions is not None:
        dirs = np.asarray(directions, dtype=float)
        # Non-spatial axes (e.g. a vector axis) are rows of NaN: keep spatial rows only.
        dirs = dirs[~np.all(np.isnan(dirs), axis=1)]
        if dirs.shape != (3, 3):
            raise ValueError(f"expected 3 spatial 'space directions', got {dirs.shape[0]}")
        affine[:3, :3] = dirs.T  # row i of 'space directions' is the world step of axis i
        origin = header.get("space origin")
        if origin is not None:
            affine[:3, 3] = np.asarray(origin, dtype=float)
    else:
        spacings = header.get("spacings")
        if spacings is not None:
            sp = np.asarray(spacings, dtype=float)[:3]
            affine[:3, :3] = np.diag(np.where(np.isfinite(sp), sp, 1.0))
    space = str(header.get("space", "")).lower()
    to_ras = _SPACE_TO_RAS.get(space, np.eye(3))
    affine[:3, :] = to_ras @ affine[:3, :]
    return affine


def load_volume(path: str | os.PathLike[str]) -> Volume:
    """Read a 3D NIfTI (``.nii``, ``.nii.gz``) or NRRD (``.nrrd``) volume, or a DICOM series.

    Args:
        path: File to read; or a folder of DICOM files (one series), or one ``.dcm`` file
            (its series is read from its folder).

    Returns:
        The volume, its array in file order and its affine in RAS+ millimetres.

    Raises:
        VolumeNotFoundError: If the file does not exist (a ``ValueError``).
        ValueError: If the extension is unsupported, the data are not 3D (the message names the
            shape) or contain NaN/infinite values (the message says how many), or a DICOM
            series is inconsistent (see :func:`fmseg.dicom.load_dicom_series`).
    """
    p = Path(path)
    dicom = p.is_dir() or is_dicom(p)
    ext = None if dicom else volume_format(p)
    if not (p.is_file() or p.is_dir()):
        raise VolumeNotFoundError(2, "Volume file not found", str(p))
    if dicom:
        array, affine = load_dicom_series(p)
        array = _as_3d(array, p)
    elif ext == ".nrrd":
        data, header = nrrd.read(str(p), index_order="F")
        array = _as_3d(np.asarray(data), p)
        affine = _nrrd_affine(header)
    else:
        img = nib.load(str(p))
        array = _as_3d(np.asarray(img.dataobj), p)
        affine = np.asarray(img.affine, dtype=float)
    _check_finite(array, p)
    affine = _check_affine(affine)
    return Volume(array=array, affine=affine, spacing=_spacing_from_affine(affine), path=p)


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def _write_nrrd(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    lps = _LPS @ affine[:3, :]
    header = {
        "space": "left-posterior-superior",
        "space directions": lps[:, :3].T,
        "space origin": lps[:, 3],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }
    nrrd.write(str(path), array, header, index_order="F")


def _umask() -> int:
    """The process umask.

    Reading it means setting it: a strict one is set meanwhile, so a file another thread
    creates in that instant is never more open than intended.
    """
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write: Callable[[Path], None], suffix: str = "") -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it onto ``path``.

    The file gets the mode a plain ``open(path, "w")`` would give (``0o666`` less the umask),
    not the ``0o600`` of a temporary file.

    Args:
        path: Destination; its folder must exist.
        write: Writes the data to the path it is given.
        suffix: Ending of the temporary name, for writers that choose the format by it
            (``".nii.gz"``).

    Raises:
        ValueError: If the folder does not exist.
    """
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"Cannot write {path}: folder {parent} does not exist")
    fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _label_dtype(labels: np.ndarray) -> np.dtype:
    if labels.dtype == bool:
        return np.dtype(np.uint8)
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ValueError("labels must be whole numbers (got non-integer float values)")
    elif not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.size == 0:
        return np.dtype(np.uint8)
    lo, hi = labels.min(), labels.max()
    if lo < 0:
        raise ValueError(f"labels must be non-negative, found minimum {lo}")
    if hi <= np.iinfo(np.uint8).max:
        return np.dtype(np.uint8)
    if hi <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    raise ValueError(f"label value {hi} does not fit in uint16 (max 65535)")


def _check_shape(array: np.ndarray, reference_shape: tuple[int, ...] | None, what: str) -> None:
    if array.ndim != 3:
        raise ValueError(f"{what} must be 3D, got shape {array.shape}")
    if reference_shape is not None and tuple(array.shape) != tuple(reference_shape):
        raise ValueError(
            f"{what} shape {array.shape} does not match the image shape {tuple(reference_shape)}"
        )


def save_labels(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    affine: np.ndarray,
    reference_shape: tuple[int, ...] | None = None,
) -> Path:
    """Write a label map atomically as NIfTI or NRRD (chosen by the extension).

    The smallest of uint8/uint16 that holds the largest label is used.

    Args:
        path: Destination (``.nii``, ``.nii.gz`` or ``.nrrd``); replaced if it exists.
        labels: Integer (or boolean, or whole-valued float) 3D array in file order.
        affine: 4x4 RAS voxel-to-world affine, usually ``Volume.affine`` of the image.
        reference_shape: If given, the shape the labels must have (the image's shape).

    Returns:
        The path written.

    Raises:
        ValueError: On an unsupported extension, a missing folder, a non-3D or mismatched
            shape, negative or non-integer labels, labels above 65535 or a bad affine.
    """
    p = Path(path)
    volume_format(p)
    arr = np.asarray(labels)
    _check_shape(arr, reference_shape, "labels")
    aff = _check_affine(affine)
    arr = arr.astype(_label_dtype(arr), copy=False)
    writer = _write_nrrd if volume_format(p) == ".nrrd" else _write_nifti
    write_atomic(p, lambda tmp: writer(tmp, arr, aff), volume_format(p))
    return p


def save_volume(
    path: str | os.PathLike[str],
    array: np.ndarray,
    affine: np.ndarray,
    reference_shape: tuple[int, ...] | None = None,
) -> Path:
    """Write a float map (probabilities, logits, an image) atomically as float32 NIfTI or NRRD.

    Args:
        path: Destination (``.nii``, ``.nii.gz`` or ``.nrrd``); replaced if it exists.
        array: 3D array in file order.
        affine: 4x4 RAS voxel-to-world affine.
        reference_shape: If given, the shape the array must have.

    Returns:
        The path written.

    Raises:
        ValueError: On an unsupported extension, a missing folder, a bad shape or affine, or
            NaN/infinite values.
    """
    p = Path(path)
    volume_format(p)
    arr = np.asarray(array)
    _check_shape(arr, reference_shape, "array")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise ValueError(f"array must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    _check_finite(arr, p)
    aff = _check_affine(affine)
    writer = _write_nrrd if volume_format(p) == ".nrrd" else _write_nifti
    write_atomic(p, lambda tmp: writer(tmp, arr, aff), volume_format(p))
    return p


def save_samples(path: str | os.PathLike[str], samples: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``(K, X, Y, Z)`` sample probabilities atomically as a 4D float32 NIfTI.

    The samples become the 4th NIfTI dimension (``(X, Y, Z, K)``), as viewers expect.

    Raises:
        ValueError: Not a NIfTI path, not a ``(K, X, Y, Z)`` stack, NaN/inf or a bad affine.
    """
    p = Path(path)
    if volume_format(p) == ".nrrd":
        raise ValueError("4D samples are written as NIfTI (.nii or .nii.gz)")
    arr = np.asarray(samples, dtype=np.float32)
    if arr.ndim != 4:
        raise ValueError(f"samples must be a (K, X, Y, Z) stack, got shape {arr.shape}")
    _check_finite(arr, p)
    aff = _check_affine(affine)
    write_atomic(p, lambda tmp: _write_nifti(tmp, np.moveaxis(arr, 0, -1), aff), volume_format(p))
    return p
