"""Benchmark targets from the corpus's held-out split (used by every benchmark from now on).

Two groups, in the target format of ``benchmarks/bench_incontext.py`` (``name``, ``group``,
``image``, ``labels`` (binary), ``axis``, ``window``):

* ``heldout-subjects``: structures of the held-out subjects (TotalSegmentator's DICOM CT and
  MR, two Desikan-Killiany brains) that are *not* held-out concepts: new subjects, known
  kinds of structure;
* ``heldout-structures``: the held-out concepts (spleen, kidney, pancreas, putamen,
  hippocampus, lingual gyrus, superior temporal gyrus) in held-out and training subjects:
  kinds of structure no training run has seen.

Label-only brains get a synthetic T1-like image drawn once with a fixed seed
(:func:`synthetic_volume`). Each target is sliced along the axis with the most slices holding
it (the thin-slab CT and MR have few axial slices); structures under :data:`MIN_SLICES`
slices are skipped, and at most :data:`PER_RECORD` per record are kept (a fixed random draw).
"""

from __future__ import annotations

import numpy as np
import torch

from .record import Record
from .splits import held_out_concept, is_held_out_subject
from .synth import Appearance, synthesize

MIN_SLICES = 12
PER_RECORD = 3
STRUCTURE_RECORDS = ("ts-ct", "ts-dicom", "ts-mr", "dk-10021", "dk-15697", "colin27-aal")


def synthetic_volume(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A fixed synthetic image ``(X, Y, Z)`` in [0, 1] of a label-only brain.

    T1-like on average (labels get one random grey level each around a common mean, the
    background stays dark), with blur, noise and a mild bias field; no deformation.
    """
    rng = np.random.default_rng(seed)
    n = int(labels.max()) + 1
    means = np.clip(rng.normal(0.55, 0.12, n), 0.15, 1.0).astype(np.float32)
    means[0] = 0.02
    app = Appearance(means, np.full(n, 0.03, np.float32), 0.7, 0.02, 0.2, 1.0, False, 0.0)
    stack = torch.from_numpy(np.ascontiguousarray(labels)).to(torch.int16)
    img, _ = synthesize(stack, app, torch.Generator().manual_seed(seed), warp=False)
    return img.numpy()


def _best_axis(mask: np.ndarray) -> tuple[int, int]:
    counts = [int(mask.any(axis=tuple(a for a in range(3) if a != ax)).sum()) for ax in range(3)]
    return int(np.argmax(counts)), max(counts)


def _targets(rec: Record, image, values: list[int], group: str, window) -> list[dict]:
    out = []
    for v in values:
        mask = rec.labels == v
        axis, n = _best_axis(mask)
        if n >= MIN_SLICES:
            out.append(
                dict(
                    name=f"{rec.id}/{rec.names[v]}",
                    group=group,
                    image=image,
                    labels=mask.astype(np.int32),
                    axis=axis,
                    window=window,
                    spacing=tuple(float(x) for x in rec.spacing),
                )
            )
    return out


def _left_concept(name: str) -> bool:
    """A held-out concept (not the 10 AAL ones), left side only (one per concept)."""
    concept = held_out_concept(name)
    right = name.endswith(("_R", "_right")) or ":r_" in name
    return concept is not None and concept != "aal-held-out" and not right


def heldout_targets(records: list[Record], groups=("heldout-subjects", "heldout-structures")):
    """Benchmark targets of the held-out split (see the module docstring)."""
    out: list[dict] = []
    for rec in records:
        if rec.image is None:
            image, window = synthetic_volume(rec.labels), (0.0, 1.0)
        else:
            image, window = rec.image, rec.window
        if "heldout-subjects" in groups and is_held_out_subject(rec.subject):
            vals = [v for v, n in rec.names.items() if not held_out_concept(n)]
            found = _targets(rec, image, vals, "heldout-subjects", window)
            rng = np.random.default_rng(0)
            if len(found) > PER_RECORD:
                found = [
                    found[i] for i in sorted(rng.choice(len(found), PER_RECORD, replace=False))
                ]
            out += found
        if "heldout-structures" in groups and rec.id in STRUCTURE_RECORDS:
            vals = [v for v, n in rec.names.items() if _left_concept(n)]
            found = _targets(rec, image, vals, "heldout-structures", window)
            out += found[:PER_RECORD]
    return out


#: Cross-subject pairs ``(support record, query record)``: same label set, same RAS axes;
#: the query subject is always held out.
CROSS_PAIRS = (("dk-10021", "dk-9861"), ("dk-12876", "dk-15697"), ("ts-ct", "ts-dicom"))
CROSS_PER_PAIR = 6
MIN_EXTENT_MM = 10.0


def _extent_mm(mask: np.ndarray, spacing) -> float:
    """Smallest bounding-box side of ``mask`` in mm (0 when empty)."""
    if not mask.any():
        return 0.0
    sides = []
    for ax in range(3):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))
        sides.append((idx[-1] - idx[0] + 1) * float(spacing[ax]))
    return min(sides)


def cross_subject_targets(records: list[Record]) -> list[dict]:
    """Targets whose supports come from another subject (group ``cross-subject``).

    For each pair of :data:`CROSS_PAIRS`, up to :data:`CROSS_PER_PAIR` structures (a fixed
    random draw) present in both subjects, at least :data:`MIN_EXTENT_MM` in every direction
    in both and not a held-out concept; sliced along the query's axis with the most slices
    holding it. Each dict is a query target plus ``support_image``, ``support_labels`` and
    ``support_window``.
    """
    by_id = {r.id: r for r in records}
    out: list[dict] = []
    for sup_id, qry_id in CROSS_PAIRS:
        if sup_id not in by_id or qry_id not in by_id:
            continue
        s_rec, q_rec = by_id[sup_id], by_id[qry_id]
        s_vals = {n: v for v, n in s_rec.names.items()}
        found = []
        for v, name in sorted(q_rec.names.items()):
            if name not in s_vals or held_out_concept(name):
                continue
            q_mask, s_mask = q_rec.labels == v, s_rec.labels == s_vals[name]
            if min(_extent_mm(q_mask, q_rec.spacing), _extent_mm(s_mask, s_rec.spacing)) < (
                MIN_EXTENT_MM
            ):
                continue
            axis, n = _best_axis(q_mask)
            if n >= MIN_SLICES:
                found.append((name, q_mask, s_mask, axis))
        rng = np.random.default_rng(0)
        if len(found) > CROSS_PER_PAIR:
            found = [found[i] for i in sorted(rng.choice(len(found), CROSS_PER_PAIR, False))]
        s_img, s_win = _image(s_rec)
        q_img, q_win = _image(q_rec)
        for name, q_mask, s_mask, axis in found:
            out.append(
                dict(
                    name=f"{sup_id}->{qry_id}/{name}",
                    group="cross-subject",
                    image=q_img,
                    labels=q_mask.astype(np.int32),
                    axis=axis,
                    window=q_win,
                    support_image=s_img,
                    support_labels=s_mask.astype(np.int32),
                    support_window=s_win,
                )
            )
    return out


def _image(rec: Record):
    """``(image, window)``: the record's, or its fixed synthetic image for label-only ones."""
    if rec.image is None:
        return synthetic_volume(rec.labels), (0.0, 1.0)
    return rec.image, rec.window
