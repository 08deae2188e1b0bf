"""One labelled volume of the training corpus, and its file format.

A :class:`Record` is an integer label volume (always), the image it labels (or None for
label-only atlases, which are turned into images by :mod:`fmseg.training.synth`), the
geometry, the modality, the names of its labels and where it came from. Arrays are stored in
the closest canonical (RAS+) orientation, so array axis 2 is head-foot for every record whose
header says where the head is (``orientation`` says when a header cannot be trusted).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Record:
    """A labelled volume.

    Attributes:
        id: Unique id, ``<source>-<subject>[-<label set>]``.
        source: Key of :data:`fmseg.training.sources.SOURCES`.
        subject: Subject id; records of one subject share it (splits are by subject).
        modality: ``"CT"``, ``"MR-T1"``, ``"MR"``, ``"microscopy"`` or ``"labels"``.
        labels: ``(X, Y, Z)`` int16 label map (0 = background).
        image: ``(X, Y, Z)`` float32 raw intensities, or None (label-only).
        spacing: Voxel size in mm.
        names: Label value -> canonical name ``"<label set>:<name>"``.
        licence: Licence of the data.
        window: Intensity window for normalisation (CT presets), None = percentiles.
        orientation: Axis codes of the arrays (``"RAS"``), or ``"unknown"``.
        excluded: Label values never used as training targets (held-out structures).
        eval_region: ``(axis, start)``: slices from ``start`` on along ``axis`` are held out.
        unions: Extra structures made of several label values (name -> values).
    """

    id: str
    source: str
    subject: str
    modality: str
    labels: np.ndarray
    image: np.ndarray | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    names: dict[int, str] = field(default_factory=dict)
    licence: str = ""
    window: tuple[float, float] | None = None
    orientation: str = "RAS"
    excluded: tuple[int, ...] = ()
    eval_region: tuple[int, int] | None = None
    unions: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def meta(self) -> dict:
        """JSON-able metadata (everything but the arrays)."""
        present = np.unique(self.labels)
        return {
            "id": self.id,
            "source": self.source,
            "subject": self.subject,
            "modality": self.modality,
            "shape": list(self.labels.shape),
            "has_image": self.image is not None,
            "spacing": [float(s) for s in self.spacing],
            "names": {str(k): v for k, v in self.names.items()},
            "labels_present": int((present > 0).sum()),
            "licence": self.licence,
            "window": None if self.window is None else [float(w) for w in self.window],
            "orientation": self.orientation,
            "excluded": [int(v) for v in self.excluded],
            "eval_region": None if self.eval_region is None else list(self.eval_region),
            "unions": {k: [int(v) for v in vs] for k, vs in self.unions.items()},
        }


def save_record(record: Record, folder: Path) -> Path:
    """Atomically write ``<folder>/<id>.npz`` (arrays + metadata JSON) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"labels": record.labels.astype(np.int16)}
    if record.image is not None:
        arrays["image"] = record.image.astype(np.float32)
    arrays["meta"] = np.frombuffer(json.dumps(record.meta()).encode(), dtype=np.uint8)
    path = folder / f"{record.id}.npz"
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz.tmp")
    os.close(fd)
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)
    return path


def load_record(path: Path) -> Record:
    """Read a record written by :func:`save_record`."""
    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        image = z["image"] if "image" in z.files else None
        labels = z["labels"]
    return Record(
        id=meta["id"],
        source=meta["source"],
        subject=meta["subject"],
        modality=meta["modality"],
        labels=labels,
        image=image,
        spacing=tuple(meta["spacing"]),
        names={int(k): v for k, v in meta["names"].items()},
        licence=meta["licence"],
        window=None if meta["window"] is None else tuple(meta["window"]),
        orientation=meta["orientation"],
        excluded=tuple(meta["excluded"]),
        eval_region=None if meta["eval_region"] is None else tuple(meta["eval_region"]),
        unions={k: tuple(v) for k, v in meta.get("unions", {}).items()},
    )
