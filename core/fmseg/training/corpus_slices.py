"""Training slices for the click decoder, drawn from the corpus's training split.

A :class:`CorpusSliceKey` names one 2D slice of one corpus record along one array axis, with
either the record's real image or a SynthSeg-style image of its labels
(:func:`fmseg.training.synth.synthesize`). :func:`training_keys` enumerates them; a
:class:`CorpusSlices` turns a key into the model input and the metadata that
:mod:`fmseg.training.embed_cache` stores beside the embedding; :func:`entry_targets` turns a
cached label slice back into training targets.

What never becomes a target: records of held-out subjects (not enumerated at all), the
evaluation region of a record and the click benchmark's LiTS slices (:func:`train_part`),
excluded label values and names of held-out concepts
(:func:`~fmseg.training.splits.held_out_concept`).

Reproducibility: the synthetic contrast is drawn once per (record, axis, seed) and the noise per
slice from ``(seed, record, axis, index)``, so a slice's cached image never depends on which
other slices were cached with it.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..transforms import SliceFrame, intensity_window, prepare_slice
from .embed_cache import LITS_ZSPLIT, MIN_PX, MODEL_SIZE, SliceInput, components
from .episodes import axes_of, crop_to_split
from .record import Record
from .splits import held_out_concept, is_held_out_subject
from .synth import Appearance, draw_appearance, synthesize

# The click benchmark (embed_cache.evaluation_keys) scores LiTS-117 along array axis 2 from
# LITS_ZSPLIT on, while the corpus's split cuts axis 0: click training leaves out both.
CLICK_EVAL_REGIONS = {"lits117": (2, LITS_ZSPLIT)}
STEP = 3  # every 3rd labelled slice: ~2,000 slices (incl. synthetic) on the v1 corpus
SYNTH_PROB = 0.2  # share of real slices that also get a synthetic copy
SEED = 0
# Subjects whose records are atlases drawn on a template brain (grouped apart from other MR).
BRAIN_ATLAS_SUBJECTS = ("colin27",)
# Structures made of separate instances (tumours, nuclei): one target per 2D component, as
# the legacy LiTS tumours, because a user clicks one lesion or cell, not all of them at once.
INSTANCE = re.compile(r"tumou?r|nucle|lesion")
DEFAULT_WEIGHTS = {"ct": 0.35, "brain-atlas": 0.2, "mr": 0.1, "microscopy": 0.05, "synthetic": 0.3}
_NAME = re.compile(r"^corpus_(?P<rec>.+)_a(?P<axis>\d)_(?P<index>\d+)(?:_syn(?P<seed>\d+))?$")


@dataclass(frozen=True)
class CorpusSliceKey:
    """One 2D slice of a corpus record.

    Attributes:
        record: Record id.
        axis: Array axis the slice is taken along.
        index: Slice index along ``axis`` in the record's training part.
        synth_seed: Seed of the synthetic image, or None for the real image.
    """

    record: str
    axis: int
    index: int
    synth_seed: int | None = None

    dataset = "corpus"

    @property
    def name(self) -> str:
        """File stem in the embedding cache (the seed is part of it: other seed, other file)."""
        syn = "" if self.synth_seed is None else f"_syn{self.synth_seed}"
        return f"corpus_{self.record}_a{self.axis}_{self.index:03d}{syn}"

    @classmethod
    def from_name(cls, name: str) -> CorpusSliceKey | None:
        """The key of a cache file stem, or None if ``name`` is not a corpus slice."""
        m = _NAME.match(name)
        if m is None:
            return None
        seed = None if m["seed"] is None else int(m["seed"])
        return cls(m["rec"], int(m["axis"]), int(m["index"]), seed)


def family(record: Record) -> str:
    """Sampling group of a record's real slices: ``ct``, ``mr``, ``brain-atlas``, ...

    Label-only records have no real slices; their (synthetic) slices are ``synthetic``.
    """
    if record.image is None or record.modality == "labels":
        return "synthetic"
    if record.subject in BRAIN_ATLAS_SUBJECTS:
        return "brain-atlas"
    if record.modality.startswith("MR"):
        return "mr"
    return record.modality.lower()


def trainable_values(record: Record) -> list[int]:
    """Label values that may be targets: named, not excluded, not a held-out concept."""
    return sorted(
        v
        for v, name in record.names.items()
        if v not in record.excluded and held_out_concept(name) is None
    )


def train_part(record: Record) -> tuple[np.ndarray | None, np.ndarray]:
    """Image and labels a click trainer may use.

    The corpus's training part, less the click benchmark's region (:data:`CLICK_EVAL_REGIONS`).
    """
    img, lab = crop_to_split(record, "train")
    if record.id in CLICK_EVAL_REGIONS:
        axis, start = CLICK_EVAL_REGIONS[record.id]
        keep = tuple(slice(0, start) if a == axis else slice(None) for a in range(3))
        img, lab = (None if img is None else img[keep]), lab[keep]
    return img, lab


def _seed(*parts: int | str) -> int:
    """A 63-bit seed from ints and strings (crc32 of strings: stable across runs)."""
    ints = [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(2, np.uint64)[0] >> 1)


def labelled_slices(labels: np.ndarray, values: list[int], axis: int, min_px: int) -> np.ndarray:
    """Indices along ``axis`` whose slice holds ``>= min_px`` pixels of one of ``values``.

    Args:
        labels: ``(X, Y, Z)`` integer label map.
        values: Trainable label values.
        axis: Slicing axis.
        min_px: Smallest structure area.
    """
    lab = np.moveaxis(labels, axis, 0).reshape(labels.shape[axis], -1).astype(np.int64)
    n_lab = int(lab.max()) + 1
    flat = lab + n_lab * np.arange(len(lab))[:, None]
    counts = np.bincount(flat.ravel(), minlength=n_lab * len(lab)).reshape(len(lab), n_lab)
    vals = [v for v in values if v < n_lab]
    return np.flatnonzero((counts[:, vals] >= min_px).any(1)) if vals else np.zeros(0, int)


def record_keys(
    record: Record, step: int = STEP, synth_prob: float = SYNTH_PROB, seed: int = SEED
) -> list[CorpusSliceKey]:
    """Training slices of one record (none for a held-out subject).

    Every ``step``-th labelled slice along each usable axis, starting at an offset drawn from
    the record id, so that records sharing one image (the Colin27 atlases) take different
    slices. Real records: the real slice, plus with probability ``synth_prob`` a synthetic copy;
    label-only records: the synthetic slice only.
    """
    if is_held_out_subject(record.subject):
        return []
    values = trainable_values(record)
    _, lab = train_part(record)
    real = family(record) != "synthetic"
    rng = np.random.default_rng(_seed(seed, record.id))
    start = zlib.crc32(record.id.encode()) % step
    keys = []
    for axis in axes_of(record):
        for i in labelled_slices(lab, values, axis, MIN_PX)[start::step]:
            if real:
                keys.append(CorpusSliceKey(record.id, axis, int(i)))
            if not real or rng.random() < synth_prob:
                keys.append(CorpusSliceKey(record.id, axis, int(i), seed))
    return keys


def training_keys(
    records: list[Record], step: int = STEP, synth_prob: float = SYNTH_PROB, seed: int = SEED
) -> list[CorpusSliceKey]:
    """:func:`record_keys` of every record (held-out subjects give none)."""
    return [k for r in records for k in record_keys(r, step, synth_prob, seed)]


def synthetic_slice(
    label: np.ndarray, appearance: Appearance, key: CorpusSliceKey
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic image of one ``(H, W)`` label slice.

    Returns:
        ``(image, labels)``: ``(H, W)`` float32 in [0, 1] and the ``(H, W)`` int16 labels after
        the appearance's deformation (the targets must come from these).
    """
    gen = torch.Generator().manual_seed(_seed(key.synth_seed, key.record, key.axis, key.index))
    lab = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int16))[None]
    img, lab = synthesize(lab, appearance, gen, warp=True)
    return img[0].numpy(), lab[0].numpy().astype(np.int16)


class CorpusSlices:
    """Model inputs of corpus slices (the ``inputs`` of :func:`embed_cache.ensure_cached`).

    Args:
        records: Corpus records; records of held-out subjects are dropped.
    """

    def __init__(self, records: list[Record]) -> None:
        self.records = {r.id: r for r in records if not is_held_out_subject(r.subject)}
        self._windows: dict[str, tuple[float, float]] = {}
        self._appearances: dict[tuple[str, int, int], Appearance] = {}

    def window(self, record: Record, image: np.ndarray) -> tuple[float, float]:
        """The product's window: the CT preset, else percentiles of the (training) volume."""
        if record.id not in self._windows:
            self._windows[record.id] = intensity_window(image, record.window)
        return self._windows[record.id]

    def appearance(self, record: Record, key: CorpusSliceKey) -> Appearance:
        """One random contrast per (record, axis, seed)."""
        k = (record.id, key.axis, key.synth_seed)
        if k not in self._appearances:
            rng = np.random.default_rng(_seed(key.synth_seed, record.id, key.axis))
            self._appearances[k] = draw_appearance(int(record.labels.max()) + 1, rng)
        return self._appearances[k]

    def __call__(self, key: CorpusSliceKey, size: int = MODEL_SIZE) -> SliceInput:
        """Model input ``(1, 3, size, size)``, label slice ``(H, W)`` and cache metadata."""
        rec = self.records[key.record]
        img, lab = train_part(rec)
        label = np.take(lab, key.index, axis=key.axis)
        spacing = tuple(float(s) for a, s in enumerate(rec.spacing) if a != key.axis)
        if key.synth_seed is None:
            image, window = np.take(img, key.index, axis=key.axis), self.window(rec, img)
        else:
            image, label = synthetic_slice(label, self.appearance(rec, key), key)
            window = (0.0, 1.0)
        frame = SliceFrame.for_slice(label.shape, spacing, size)
        label = np.ascontiguousarray(label, dtype=np.int16)
        return SliceInput(prepare_slice(image, window, frame), label, self.meta(rec, key, label))

    def meta(self, rec: Record, key: CorpusSliceKey, label: np.ndarray) -> dict:
        """What :func:`entry_targets` needs, stored in the cache entry (no corpus at load)."""
        present = {int(v) for v in np.unique(label)}
        return {
            "record": rec.id,
            "subject": rec.subject,
            "group": "synthetic" if key.synth_seed is not None else family(rec),
            "spacing": tuple(float(s) for a, s in enumerate(rec.spacing) if a != key.axis),
            "names": {v: n for v, n in rec.names.items() if v in present},
            "excluded": [int(v) for v in rec.excluded],
            "unions": {k: [int(v) for v in vs] for k, vs in rec.unions.items()},
        }


def entry_targets(
    label: np.ndarray, meta: dict, min_px: int = MIN_PX
) -> list[tuple[str, np.ndarray]]:
    """Training targets ``(group, (H, W) bool mask)`` of a cached corpus slice.

    One target per trainable label value with ``>= min_px`` pixels (one per 2D component for
    :data:`INSTANCE` structures), plus each union of several values present in the slice.
    """
    if is_held_out_subject(meta["subject"]):
        return []
    group, names, excluded = meta["group"], meta["names"], set(meta["excluded"])
    out: list[tuple[str, np.ndarray]] = []
    for v in np.unique(label[label > 0]).tolist():
        name = names.get(v)
        if name is None or v in excluded or held_out_concept(name) is not None:
            continue
        mask = label == v
        if INSTANCE.search(name.lower()):
            out += [(group, m) for m in components(mask, min_px)]
        elif mask.sum() >= min_px:
            out.append((group, mask))
    for values in meta["unions"].values():
        # a union with one value present is the same mask as that value's target
        if excluded & set(values) or np.isin(values, label).sum() < 2:
            continue
        if (mask := np.isin(label, values)).sum() >= min_px:
            out.append((group, mask))
    return out


def cached_keys(root: Path) -> list[CorpusSliceKey]:
    """Corpus slices present in an embedding cache folder, in name order."""
    keys = (CorpusSliceKey.from_name(p.stem) for p in sorted(Path(root).glob("corpus_*.pt")))
    return [k for k in keys if k is not None]


def from_corpus(
    root: Path | None = None, step: int = STEP, synth_prob: float = SYNTH_PROB, seed: int = SEED
) -> tuple[list[CorpusSliceKey], CorpusSlices]:
    """Training keys and their input maker for the corpus at ``root`` (training split)."""
    from .corpus import load_corpus

    records = load_corpus(root, split="train")
    return training_keys(records, step, synth_prob, seed), CorpusSlices(records)


def count_by_group(keys: list[CorpusSliceKey], slices: CorpusSlices) -> dict[str, int]:
    """Number of keys per sampling group."""
    out: dict[str, int] = {}
    for k in keys:
        g = "synthetic" if k.synth_seed is not None else family(slices.records[k.record])
        out[g] = out.get(g, 0) + 1
    return out
