"""Shipped in-context network on real held-out data (skips without ../shared/data)."""

import nibabel as nib
import numpy as np
import pytest

from fmseg import drain
from fmseg.incontext import SupportSet, add_slice, build_backend, segment_volume_iter

pytestmark = pytest.mark.data


def test_incontext_small_segments_held_out_liver(shared_data):
    ct = np.asarray(nib.load(shared_data / "lits117_ct.nii.gz").dataobj, dtype=np.float32)
    lab = (np.asarray(nib.load(shared_data / "lits117_labels.nii.gz").dataobj) > 0).astype(int)
    support = SupportSet()
    for z in np.linspace(66, 124, 8).round().astype(int):  # the half never trained on
        add_slice(support, ct, lab, 0, int(z), window=(-160, 240))
    queries = [z for z in range(64, 128, 3) if z not in {e.index for e in support.examples}]
    backend = build_backend("incontext-small", device="cpu")
    res = drain(segment_volume_iter(backend, support, ct, 0, (-160, 240), slices=queries))
    pred, gt = res.labels[queries] > 0, lab[queries] > 0
    dice = 2 * (pred & gt).sum() / (pred.sum() + gt.sum())
    assert dice >= 0.80, f"held-out liver Dice {dice:.3f} with 8 supports"


def test_auto_fills_between_annotated_liver_slices(shared_data):
    """The default backend with 4 annotated slices of the evaluation half: the prior path."""
    ct = np.asarray(nib.load(shared_data / "lits117_ct.nii.gz").dataobj, dtype=np.float32)
    lab = (np.asarray(nib.load(shared_data / "lits117_labels.nii.gz").dataobj) > 0).astype(int)
    support = SupportSet()
    for z in np.linspace(66, 124, 4).round().astype(int):
        add_slice(support, ct, lab, 0, int(z), window=(-160, 240))
    queries = [z for z in range(64, 128, 3) if z not in {e.index for e in support.examples}]
    backend = build_backend("auto", device="cpu")
    res = drain(segment_volume_iter(backend, support, ct, 0, (-160, 240), slices=queries))
    pred, gt = res.labels[queries] > 0, lab[queries] > 0
    dice = 2 * (pred & gt).sum() / (pred.sum() + gt.sum())
    assert dice >= 0.88, f"held-out liver Dice {dice:.3f} with 4 supports"
    assert set(res.path_counts()) <= {"prior", "in-context"} and res.path_counts().get("prior")
