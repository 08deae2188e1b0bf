"""Accuracy of box prompts and propagation on LiTS-117 (../shared/data), printed as JSON.

Liver = labels {1, 2} (the organ including its tumours); tumour components = 2D connected
components of label 2 with at least 20 pixels. Boxes are the ground-truth bounding box grown by
3 px. Propagation starts from one box on the liver's middle slice along the axial axis.

Usage: python benchmarks/bench_accuracy.py [--axis 0] [--step 6] [--cache-dir .cache/emb]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from fmseg import Box, EmbeddingCache, Prompts, Session, drain, load_volume
from fmseg.interactive.propagation import dice

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def box_dice(session: Session, axis: int, index: int, truth: np.ndarray) -> float:
    """Dice of the box-prompted mask on one slice."""
    pred = session.predictor.predict(
        session.embedding(axis, index), Prompts(box=Box.from_mask(truth, 3))
    )
    return dice(pred.mask(), truth)


def slice_scores(session: Session, labels: np.ndarray, axis: int, step: int) -> dict:
    """Mean box Dice for liver slices and tumour components along ``axis``."""
    liver, tumour = [], []
    idx = [i for i in range(labels.shape[axis]) if (np.take(labels, i, axis) > 0).sum() > 500]
    for i in idx[::step]:
        lab = np.take(labels, i, axis)
        liver.append(box_dice(session, axis, i, lab > 0))
        comps, n = ndimage.label(lab == 2)
        for c in range(1, n + 1):
            if (comps == c).sum() >= 20:
                tumour.append(box_dice(session, axis, i, comps == c))
    return {
        "liver_slices": len(liver),
        "liver_box_dice": round(float(np.mean(liver)), 4),
        "tumour_components": len(tumour),
        "tumour_box_dice": round(float(np.mean(tumour)), 4) if tumour else None,
    }


def propagation_score(session: Session, labels: np.ndarray, axis: int) -> dict:
    """Volume Dice after one box on the middle liver slice and propagation."""
    truth = labels > 0
    present = np.nonzero(truth.any(axis=tuple(a for a in range(3) if a != axis)))[0]
    mid = int(present[len(present) // 2])
    session.reset_object()
    session.set_box(axis, mid, Box.from_mask(np.take(truth, mid, axis), 3))
    t0 = time.perf_counter()
    result = drain(session.propagate_iter(axis, mid))
    secs = time.perf_counter() - t0
    n = result.last - result.first
    return {
        "seed_slice": mid,
        "slices_propagated": n,
        "truth_slices": int(present.size),
        "volume_dice": round(dice(session.mask, truth), 4),
        "reasons": result.reasons,
        "seconds": round(secs, 1),
        "seconds_per_slice": round(secs / max(n, 1), 3),
    }


def main() -> None:
    """Run the benchmark and print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--axis", type=int, default=0, help="axial axis of the LiTS array (0)")
    ap.add_argument("--step", type=int, default=6, help="every n-th liver slice")
    ap.add_argument("--cache-dir", default=None, help="reuse embeddings across runs")
    ap.add_argument("--no-propagation", action="store_true")
    args = ap.parse_args()
    ct = load_volume(DATA / "lits117_ct.nii.gz").array
    labels = load_volume(DATA / "lits117_labels.nii.gz").array
    cache = EmbeddingCache(disk_dir=args.cache_dir) if args.cache_dir else None
    session = Session.from_registry(ct, window=(-160.0, 240.0), point_model=None, cache=cache)
    out = {"axis": args.axis, **slice_scores(session, labels, args.axis, args.step)}
    if not args.no_propagation:
        out["propagation"] = propagation_score(session, labels, args.axis)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
