"""Make the napari sample data (``napari_fmseg/data/sample_ct*.nii.gz``) from LiTS case 117.

Source: ``../shared/data/lits117_ct.nii.gz`` and ``lits117_labels.nii.gz`` (128^3, int16 HU,
labels 0 background / 1 liver / 2 tumour). Run once from the repository root::

    .venv/bin/python benchmarks/make_sample_data.py [--shared ../shared/data]

What it does, and why:

* The source arrays are stored with the cranio-caudal axis first (axis 0, inferior to superior),
  then anterior to posterior, then patient right to left, while the header claims an identity
  (RAS) affine. The sample is transposed to ``(x, y, z) = (right->left, anterior->posterior,
  inferior->superior)`` and given the matching affine ``diag(-1, -1, 1)`` (axis codes L, P, S,
  the usual orientation of CT converted from DICOM), so that the third array axis is axial and
  napari's slider (fmseg's reader reverses axes) scrolls axial slices shown in radiological
  convention.
* Spacing was not recorded by the source; the 1 mm of its header is kept.
* The liver covers all 128 axial slices of this already liver-centred case, so "the liver's
  z-range plus a margin" is the whole volume (2.8 MB compressed). To stay under 1.5 MB the sample
  keeps the ``N_SLICES`` consecutive axial slices holding the most liver + tumour voxels, with the
  full 128 x 128 in-plane field of view. The affine's z offset records the first kept slice.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

N_SLICES = 64
MAX_BYTES = 1_500_000
REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "napari_fmseg" / "data"


def best_slab(labels_axial_first: np.ndarray, n: int) -> int:
    """Return the start of the ``n``-slice window (along axis 0) with the most foreground."""
    per_slice = (labels_axial_first > 0).sum(axis=(1, 2))
    sums = np.convolve(per_slice, np.ones(n, dtype=np.int64), mode="valid")
    return int(np.argmax(sums))


def to_nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """Encode a NIfTI-1 image as gzip (level 9) bytes, qform and sform both set (scanner)."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=9, mtime=0)


def main() -> None:
    """Write sample_ct.nii.gz and sample_ct_labels.nii.gz into napari_fmseg/data."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()

    ct = np.asarray(nib.load(args.shared / "lits117_ct.nii.gz").dataobj).astype(np.int16)
    labels = np.asarray(nib.load(args.shared / "lits117_labels.nii.gz").dataobj).astype(np.uint8)
    start = best_slab(labels, N_SLICES)
    stop = start + N_SLICES
    kept = (labels[start:stop] > 0).sum() / max(1, (labels > 0).sum())

    # (z, y, x) = (I->S, A->P, R->L)  ->  file order (x, y, z)
    ct_xyz = np.ascontiguousarray(ct[start:stop].transpose(2, 1, 0))
    lab_xyz = np.ascontiguousarray(labels[start:stop].transpose(2, 1, 0))
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [0.0, 0.0, float(start)]

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    ct_bytes = to_nifti_bytes(ct_xyz, affine)
    if len(ct_bytes) > MAX_BYTES:
        raise SystemExit(f"sample_ct.nii.gz would be {len(ct_bytes)} bytes (> {MAX_BYTES})")
    (OUT_DIR / "sample_ct.nii.gz").write_bytes(ct_bytes)
    (OUT_DIR / "sample_ct_labels.nii.gz").write_bytes(to_nifti_bytes(lab_xyz, affine))
    print(
        f"axial slices {start}..{stop - 1} of {ct.shape[0]} kept ({kept:.0%} of liver+tumour "
        f"voxels); shape {ct_xyz.shape}; sample_ct.nii.gz {len(ct_bytes)} bytes; "
        f"labels {np.bincount(lab_xyz.ravel(), minlength=3).tolist()}"
    )


if __name__ == "__main__":
    main()
