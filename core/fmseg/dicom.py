"""DICOM series -> one 3D array and its RAS+ affine (read with pydicom).

A series is a folder of single-frame DICOM files (no DICOMDIR needed), or one of its files:
then the series that file belongs to is read from its folder. Slices are sorted along the
normal of ``ImageOrientationPatient``; the geometry comes from ``ImagePositionPatient``,
``ImageOrientationPatient`` and ``PixelSpacing`` in DICOM's LPS world and is converted to RAS+
(the convention of :mod:`fmseg.io`). Stored values go through ``RescaleSlope`` /
``RescaleIntercept`` (CT: Hounsfield units).

Array order is ``(column, row, slice)``: index ``i`` runs along a row (the
``ImageOrientationPatient`` row direction), ``j`` down the columns, ``k`` along the sorted
slices, as NIfTI converters write it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: Positions / directions may differ by this much (mm, cosines) and still count as equal.
_TOL = 1e-3
#: Relative spread of slice gaps accepted as one uniform spacing.
_GAP_TOL = 0.01
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _has_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """True for a ``.dcm`` file, a file with the DICOM preamble, or a folder holding either."""
    p = Path(path)
    if p.is_dir():
        return any(
            f.is_file() and (f.suffix.lower() == ".dcm" or _has_preamble(f))
            for f in sorted(p.iterdir())[:64]
        )
    return p.suffix.lower() == ".dcm" or (p.is_file() and _has_preamble(p))


def _read_headers(folder: Path) -> list:
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = []
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True, force=f.suffix.lower() == ".dcm")
        except (InvalidDicomError, EOFError, OSError, ValueError):
            continue  # not DICOM (a README, a thumbnail): ignored
        if "ImagePositionPatient" in ds and "PixelSpacing" in ds:
            out.append((f, ds))
    return out


def _pick_series(path: Path) -> tuple[Path, list]:
    """The files of one series: the folder's only one, or the one ``path`` belongs to."""
    folder = path if path.is_dir() else path.parent
    headers = _read_headers(folder)
    if not headers:
        raise ValueError(f"{path}: no DICOM image slices with patient geometry found")
    by_uid: dict[str, list] = {}
    for f, ds in headers:
        by_uid.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
    if path.is_file():
        own = [uid for uid, items in by_uid.items() if any(f == path for f, _ in items)]
        if not own:
            raise ValueError(f"{path}: not a DICOM image slice with patient geometry")
        return folder, by_uid[own[0]]
    if len(by_uid) > 1:
        sizes = ", ".join(str(len(v)) for v in by_uid.values())
        raise ValueError(
            f"{path}: holds {len(by_uid)} DICOM series ({sizes} slices); open one file of the "
            "series you want, or put each series in its own folder"
        )
    return folder, next(iter(by_uid.values()))


def _geometry(headers: list, path: Path) -> tuple[list, np.ndarray]:
    """Sort slices along the normal; return them and the LPS voxel-to-world affine."""
    iop = np.asarray(headers[0][1].ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    if abs(row @ col) > _TOL or abs(np.linalg.norm(normal) - 1) > _TOL:
        raise ValueError(f"{path}: ImageOrientationPatient is not two perpendicular unit vectors")
    for f, ds in headers:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), iop, atol=_TOL):
            raise ValueError(f"{path}: slice {f.name} is oriented differently from the others")
        if (int(ds.Rows), int(ds.Columns)) != (int(headers[0][1].Rows), int(headers[0][1].Columns)):
            raise ValueError(f"{path}: slice {f.name} has a different size from the others")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise ValueError(f"{path}: {f.name} is a multi-frame file (not supported)")
    pos = {f: np.asarray(ds.ImagePositionPatient, dtype=float) for f, ds in headers}
    headers = sorted(headers, key=lambda item: float(pos[item[0]] @ normal))
    dist = np.array([float(pos[f] @ normal) for f, _ in headers])
    gaps = np.diff(dist)
    if len(gaps) and gaps.min() < _TOL:
        raise ValueError(
            f"{path}: {int(np.sum(gaps < _TOL)) + 1} slices share a position (several "
            "acquisitions or echoes in one series)"
        )
    if len(gaps) and gaps.max() - gaps.min() > _GAP_TOL * gaps.mean():
        raise ValueError(
            f"{path}: slices are unevenly spaced ({gaps.min():.3g} to {gaps.max():.3g} mm): "
            "missing slices or a variable-spacing acquisition"
        )
    dr, dc = (float(v) for v in headers[0][1].PixelSpacing)
    first = pos[headers[0][0]]
    if len(headers) > 1:
        step = (pos[headers[-1][0]] - first) / (len(headers) - 1)
    else:
        ds = headers[0][1]
        thick = float(ds.get("SpacingBetweenSlices", 0) or ds.get("SliceThickness", 0) or 1.0)
        step = normal * thick
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * dc, col * dr, step, first
    return headers, lps


def _values(headers: list, path: Path) -> np.ndarray:
    """Rescaled voxel values ``(columns, rows, slices)``, integer when the rescale keeps them so."""
    import pydicom

    slopes, intercepts, planes = [], [], []
    for f, _ in headers:
        ds = pydicom.dcmread(str(f))
        try:
            planes.append(np.asarray(ds.pixel_array))
        except Exception as err:  # compressed syntax without a decoder, truncated pixel data
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            why = f"pixel data not readable ({getattr(syntax, 'name', syntax) or err})"
            raise ValueError(f"{path}: {f.name}: {why}") from None
        slopes.append(float(ds.get("RescaleSlope", 1) or 1))
        intercepts.append(float(ds.get("RescaleIntercept", 0) or 0))
    if planes[0].ndim != 2:
        raise ValueError(f"{path}: slices of shape {planes[0].shape} are not greyscale 2D images")
    raw = np.stack(planes, axis=-1).transpose(1, 0, 2)  # (rows, cols, k) -> (cols, rows, k)
    slope, intercept = np.asarray(slopes), np.asarray(intercepts)
    whole = np.all(slope == np.round(slope)) and np.all(intercept == np.round(intercept))
    if whole and np.all(slope == 1) and np.all(intercept == 0):
        return raw
    values = raw.astype(np.float64) * slope + intercept
    if whole and values.min() >= np.iinfo(np.int16).min and values.max() <= np.iinfo(np.int16).max:
        return values.astype(np.int16)
    if whole and values.min() >= np.iinfo(np.int32).min and values.max() <= np.iinfo(np.int32).max:
        return values.astype(np.int32)
    return values.astype(np.float32)


def load_dicom_series(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a DICOM series (a folder, or one file of the series) into voxels and geometry.

    Args:
        path: Folder holding one series, or one file of the series wanted.

    Returns:
        ``(array, affine)``: array ``(columns, rows, slices)`` of rescaled values, and the
        4x4 voxel-to-world affine in RAS+ millimetres.

    Raises:
        ValueError: No image slices, several series in the folder, mixed orientations or
            sizes, duplicate or unevenly spaced slices, multi-frame files, or pixel data that
            cannot be decoded (one line naming the folder and the problem).
    """
    p = Path(path)
    _, headers = _pick_series(p)
    headers, lps = _geometry(headers, p)
    return _values(headers, p), _LPS_TO_RAS @ lps
