"""The corpus's fixed train / held-out split, by subject and by structure.

Every trainer and every benchmark uses these constants; they are part of the code so that no
run can drift from them. Held out means never a training target, never used for tuning:

* **Subjects** (:data:`HELD_OUT_SUBJECTS`): every record of these subjects. Two of the six
  Desikan-Killiany brains (evaluated with synthetic contrast at fixed seeds), TotalSegmentator's
  DICOM CT and its MR subject.
* **Region** of LiTS-117: array axis 0 index >= :data:`LITS_SPLIT` (the evaluation half used by
  every benchmark since the first in-context issue).
* **Structures** (:data:`HELD_OUT_CONCEPTS`): anatomical concepts held out in every subject
  and every label set, matched on the structure's canonical name; plus the 10 AAL structures of
  ``docs/incontext.md`` (:data:`HELD_OUT_AAL`) and, on the Colin27 grid, every label of another
  atlas (AAL3, MarsAtlas) that overlaps one of them (:func:`overlaps_held_out`).
"""

from __future__ import annotations

import re

import numpy as np

HELD_OUT_SUBJECTS = ("dk-9861", "dk-15697", "ts-dicom", "ts-mr")
LITS_SPLIT = 64
HELD_OUT_AAL = (6, 19, 30, 43, 54, 67, 78, 91, 102, 115)
HELD_OUT_AAL_NAMES = (
    "Frontal_Sup_Orb_R",
    "Supp_Motor_Area_L",
    "Insula_R",
    "Calcarine_L",
    "Occipital_Inf_R",
    "Precuneus_L",
    "Thalamus_R",
    "Cerebelum_Crus1_L",
    "Cerebelum_7b_R",
    "Vermis_9",
)
# concept -> regular expression on lower-case canonical names ("<set>:<name>")
HELD_OUT_CONCEPTS: dict[str, str] = {
    "spleen": r"(^|:)spleen$",
    "kidney": r"(^|:)kidney_(left|right)$",
    "pancreas": r"(^|:)pancreas$",
    "putamen": r"putamen",
    "hippocampus": r"hippocamp",
    "lingual gyrus": r"lingual",
    "superior temporal gyrus": r"superiortemporal|temporal_sup_[lr]$",
    "right thalamus (AAL3 nuclei of the held-out Thalamus_R)": r"^aal3:thal_\w+_r$",
}
OVERLAP_LIMIT = 0.3  # share of the smaller structure that makes an atlas label "the same"


def held_out_concept(name: str) -> str | None:
    """The held-out concept a canonical structure name belongs to, or None."""
    low = name.lower()
    for concept, pattern in HELD_OUT_CONCEPTS.items():
        if re.search(pattern, low):
            return concept
    if low.startswith("aal:") and low[4:] in {n.lower() for n in HELD_OUT_AAL_NAMES}:
        return "aal-held-out"
    return None


def is_held_out_subject(subject: str) -> bool:
    """True for the subjects no training run may use."""
    return subject in HELD_OUT_SUBJECTS


def overlaps_held_out(labels: np.ndarray, held: np.ndarray) -> set[int]:
    """Labels of ``labels`` that overlap the ``held`` mask by >= :data:`OVERLAP_LIMIT`.

    Both arrays on one grid. A label counts when the overlap is at least that share of the
    smaller of (the label, the held-out structure it meets).

    Args:
        labels: ``(X, Y, Z)`` integer label map of another atlas.
        held: ``(X, Y, Z)`` integer map of held-out structures (0 elsewhere).
    """
    out: set[int] = set()
    lab = labels.ravel()
    hv = held.ravel()
    sizes = np.bincount(lab)
    held_sizes = np.bincount(hv)
    both = (lab > 0) & (hv > 0)
    pairs, counts = np.unique(
        np.stack([lab[both], hv[both]]).astype(np.int64), axis=1, return_counts=True
    )
    for (a, h), c in zip(pairs.T, counts, strict=True):
        if c >= OVERLAP_LIMIT * min(sizes[a], held_sizes[h]):
            out.add(int(a))
    return out
