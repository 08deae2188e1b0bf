"""napari reader, labels writer and sample data for fmseg (npe2 contributions; no Qt here).

A DICOM series opens as one image: a folder of DICOM files, or one ``.dcm`` file of the series
(read by :func:`fmseg.io.load_volume` in ``(column, row, slice)`` order with its RAS affine).

Axis convention: files are read by :func:`fmseg.io.load_volume` in file order ``(x, y, z)``;
napari layers get the axes reversed, ``(z, y, x)``, so that napari's slider scrolls axial slices
(for the usual axial acquisitions), with ``scale`` the reversed voxel spacing. Each layer's
``metadata`` carries what is needed to go back to the file's grid:

- ``"affine"``: the 4x4 RAS affine of the file-order array (nibabel convention);
- ``"source_path"``: the file read (``str``);
- ``"fmseg_axes_reversed"``: ``True``, the layer data are the file array transposed;
- ``"source_shape"``: the file-order shape.

A labels layer made from an image should copy the image's metadata; the writer then saves it on
the image's grid.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fmseg.coords import array_spacing, ijk_to_world_matrix
from fmseg.dicom import is_dicom
from fmseg.io import SUPPORTED_EXTENSIONS, load_volume, save_labels

LayerDataTuple = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[str | Sequence[str]], list[LayerDataTuple]]

SAMPLE_DIR = Path(__file__).resolve().parent / "data"
SAMPLE_CT = SAMPLE_DIR / "sample_ct.nii.gz"
#: Abdominal soft-tissue window (HU) used to display the sample CT.
CT_WINDOW = (-160.0, 240.0)
_LABEL_HINTS = ("label", "seg", "mask")


def _is_dicom(path: str | Path) -> bool:
    return isinstance(path, str | Path) and is_dicom(path)


def _is_supported(path: str | Path) -> bool:
    return isinstance(path, str | Path) and (
        str(path).lower().endswith(SUPPORTED_EXTENSIONS) or _is_dicom(path)
    )


def _layer_name(path: Path) -> str:
    if path.is_dir():
        return path.name
    if path.suffix.lower() == ".dcm":
        return path.parent.name
    name = path.name
    for ext in SUPPORTED_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """npe2 reader hook: return a reader if every path is a NIfTI/NRRD file or DICOM series.

    Args:
        path: One path or a list of paths: ``.nii``, ``.nii.gz``, ``.nrrd`` files, folders of
            DICOM files, or ``.dcm`` files (each opens its whole series).

    Returns:
        :func:`read_volumes`, or ``None`` if some path is none of these.
    """
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or not all(_is_supported(p) for p in paths):
        return None
    return read_volumes


def volume_layer(path: str | Path) -> LayerDataTuple:
    """Read one file into a napari layer-data tuple with reversed axes.

    Integer files whose name contains "label", "seg" or "mask" become labels layers, everything
    else an image layer (the shipped sample CT with an abdominal window).

    Args:
        path: NIfTI or NRRD file, a DICOM series folder, or one ``.dcm`` file of a series.

    Returns:
        ``(data, kwargs, layer_type)`` with ``data`` in ``(z, y, x)`` order.

    Raises:
        ValueError: As :func:`fmseg.io.load_volume` (unsupported, missing, not 3D, NaN).
    """
    vol = load_volume(path)
    data = np.ascontiguousarray(np.transpose(vol.array))
    p = Path(path)
    is_labels = np.issubdtype(vol.array.dtype, np.integer) and any(
        hint in p.name.lower() for hint in _LABEL_HINTS
    )
    kwargs: dict[str, Any] = {
        "name": _layer_name(p),
        "scale": array_spacing(vol.affine, "kji"),  # layer data are kji array indices
        "metadata": {
            "affine": vol.affine.copy(),
            "source_path": str(p),
            "fmseg_axes_reversed": True,
            "source_shape": tuple(int(n) for n in vol.array.shape),
        },
    }
    if is_labels:
        return data, kwargs, "labels"
    if p.resolve() == SAMPLE_CT:
        kwargs.update(colormap="gray", contrast_limits=list(CT_WINDOW))
    return data, kwargs, "image"


def read_volumes(path: str | Sequence[str]) -> list[LayerDataTuple]:
    """Read NIfTI/NRRD files and DICOM series (the function :func:`get_reader` returns).

    Args:
        path: One path or a list of paths.

    Returns:
        One layer-data tuple per file.
    """
    paths = [path] if isinstance(path, str | Path) else list(path)
    # several files of one DICOM series (a multi-file drop) open that series once
    seen: set[tuple[Path, str]] = set()
    unique = []
    for p in paths:
        key = (Path(p).parent, "dicom") if Path(p).suffix.lower() == ".dcm" else (Path(p), "")
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return [volume_layer(p) for p in unique]


def _fallback_affine(meta: dict[str, Any], ndim: int) -> np.ndarray:
    """Diagonal file-order affine from a layer's napari scale/translate (which are z, y, x)."""
    scale = [float(s) for s in list(meta.get("scale") or [1.0] * ndim)[-3:]]
    translate = [float(t) for t in list(meta.get("translate") or [0.0] * ndim)[-3:]]
    # napari data (z, y, x) are the file's (k, j, i): reverse both into file (i, j, k) order.
    return ijk_to_world_matrix(translate[::-1], scale[::-1])


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: save a labels layer as NIfTI or NRRD on its image's grid.

    The axes are reversed back to file order (unless the layer's metadata says
    ``fmseg_axes_reversed: False``) and the affine comes from ``meta["metadata"]["affine"]``
    (copied from the image the labels were made from). Without it, a diagonal affine is built from
    the layer's scale and translate, with a warning.

    Args:
        path: Destination ending in ``.nii.gz``, ``.nii`` or ``.nrrd``.
        data: Labels layer data, ``(z, y, x)``.
        meta: Layer attributes as napari passes them (``metadata``, ``scale``, ...).

    Returns:
        The list of paths written (one).

    Raises:
        ValueError: As :func:`fmseg.io.save_labels`, or if the shape does not match the source
            image's shape recorded in the metadata.
    """
    metadata = dict(meta.get("metadata") or {})
    array = np.asarray(data)
    if metadata.get("fmseg_axes_reversed", True):
        array = np.transpose(array)
    affine = metadata.get("affine")
    if affine is None:
        warnings.warn(
            "labels layer has no 'affine' in its metadata (not made from an image read by "
            "fmseg): saving with a diagonal affine from the layer's scale and translate",
            UserWarning,
            stacklevel=2,
        )
        affine = _fallback_affine(meta, array.ndim)
    shape = metadata.get("source_shape")
    written = save_labels(
        path,
        array,
        np.asarray(affine, dtype=float),
        reference_shape=tuple(shape) if shape else None,
    )
    return [str(written)]


def sample_ct() -> list[LayerDataTuple]:
    """npe2 sample-data hook: the shipped liver CT (LiTS case 117, 128 x 128 x 64, int16 HU).

    Returns:
        One image layer, shown with an abdominal soft-tissue window.
    """
    data, kwargs, _ = volume_layer(SAMPLE_CT)
    kwargs["name"] = "sample_ct"
    return [(data, kwargs, "image")]
